"""Choose and build the rollout engine (and its weight-sync transport) for this rank.

One engine per data-parallel replica, on the first rank of each model-parallel group (TP rank 0 of the first
pipeline stage: the rank where ``iter_hf_tensors(..., dst_only=True)`` delivers the full tensors). The other ranks
get ``(None, None)`` and take part in syncs only through the gathers.
"""
from __future__ import annotations

from typing import Any

from rlad_megatron.rollout.config import VLLMEngineConfig


def is_engine_rank() -> bool:
    """True on the first rank of this rank's model-parallel group (or without Megatron parallel state)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return True
    return ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0


def build_rollout_engine(config: VLLMEngineConfig) -> tuple[Any, Any]:
    """``(engine, transport)`` on engine ranks, ``(None, None)`` elsewhere.

    ``config.placement == "colocated"``: a ``VLLMEngine`` in this process and an ``InProcessTransport``.
    ``"disaggregated"``: a ``RemoteVLLMEngine`` (own process) and a ``TorchDistTransport`` (pair gloo group).
    """
    config.validate()
    if not is_engine_rank():
        return None, None
    if config.placement == "colocated":
        from rlad_megatron.rollout.vllm_engine import VLLMEngine
        from rlad_megatron.weight_sync.inprocess import InProcessTransport

        engine = VLLMEngine(config)
        return engine, InProcessTransport(engine)
    from rlad_megatron.rollout.vllm_remote import RemoteVLLMEngine
    from rlad_megatron.weight_sync.dist_transport import TorchDistTransport

    engine = RemoteVLLMEngine(config)
    return engine, TorchDistTransport(engine)
