"""Which gather a weight sync of a Mixture-of-Experts student needs.

At expert parallelism > 1 a rank holds only its share of each MoE layer's routed experts, while the engine needs all
of them. The collective gather (``models.hf_export.iter_hf_tensors``) broadcasts every routed expert over the
expert-parallel group from the rank that holds it, so each data-parallel replica's engine rank gets the whole
model; the shared-memory TP gather (``shm_gather``) sees the TP group only and must not be used then.
"""
from __future__ import annotations


def experts_split_over_ranks(arch) -> bool:
    """True for a MoE model whose routed experts are spread over more than one expert-parallel rank."""
    if not getattr(arch, "is_moe", False):
        return False
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    return ps.model_parallel_is_initialized() and ps.get_expert_model_parallel_world_size() > 1
