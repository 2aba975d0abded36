"""Student and teacher Megatron GPTModels from Hugging Face checkpoints (Llama, Qwen2, Qwen3, Qwen2-MoE, Qwen3-MoE), and back.

    model_chunks, arch = load_hf_model(hf_dir, trainable=True)     # this rank's TP/PP shards, for the current
                                                                   # parallel state (initialize_model_parallel)
    for name, tensor in iter_hf_tensors(model_chunks, arch): ...   # collective: full HF tensors, one at a time
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlad_megatron.models.hf_config import (
    ModelArch, arch_from_hf_config, load_arch, padded_vocab_size, transformer_config_for,
)

__all__ = [
    "ModelArch", "arch_from_hf_config", "load_arch", "padded_vocab_size", "transformer_config_for",
    "build_model_chunks", "load_hf_model", "load_teacher", "check_tokenizer_compatible", "TokenizerMismatchError",
    "iter_hf_tensors", "export_hf_checkpoint", "load_hf_weights", "HFCheckpointError",
]


def build_model_chunks(arch: ModelArch, *, params_dtype: torch.dtype = torch.float32,
                       sequence_parallel: bool = False, padded_vocab: int | None = None,
                       **config_overrides: Any) -> list:
    """Empty GPTModel chunk(s) of ``arch`` for this rank under the current Megatron parallel state (one per
    virtual pipeline stage). Weights are uninitialised: fill them with ``hf_loader.load_hf_weights`` or a
    dist-checkpoint load."""
    from megatron.core import parallel_state as ps  # lazy: keeps `import rlad_megatron.models` light

    from rlad_megatron.models.builder import build_gpt_model  # lazy: keeps `import rlad_megatron.models` light

    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    overrides = dict(config_overrides)
    if vpp is not None and vpp > 1:
        overrides.setdefault("virtual_pipeline_model_parallel_size", vpp)
    cp = ps.get_context_parallel_world_size()
    if cp > 1:  # attention exchanges keys/values over the context-parallel group (TE only; checked at start)
        overrides.setdefault("context_parallel_size", cp)
    if arch.is_moe:  # experts' params are marked expert-parallel (own grad buffers, no DP all-reduce) from this
        overrides.setdefault("expert_model_parallel_size", ps.get_expert_model_parallel_world_size())
    config = transformer_config_for(arch, tp=tp, pp=pp, params_dtype=params_dtype,
                                    sequence_parallel=sequence_parallel, **overrides)
    stages = range(vpp) if vpp and vpp > 1 else [None]
    return [build_gpt_model(arch, config, vp_stage=s, padded_vocab=padded_vocab) for s in stages]


def load_hf_model(
    hf_dir: str | Path,
    *,
    trainable: bool = True,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    **config_overrides: Any,
) -> tuple[list, ModelArch]:
    """Build this rank's GPTModel chunk(s) for the HF checkpoint in ``hf_dir`` and load its weights.

    Uses the current parallel state (TP, PP, virtual PP) set by ``rlad_megatron.parallel.initialize_model_parallel``.
    ``trainable=False`` freezes (``requires_grad=False``) and puts the chunks in eval mode.
    Returns ``(model_chunks, arch)``.
    """
    from rlad_megatron.models.hf_loader import load_hf_weights  # lazy: keeps `import rlad_megatron.models` light

    arch = load_arch(hf_dir)
    chunks = build_model_chunks(arch, params_dtype=params_dtype, sequence_parallel=sequence_parallel,
                                **config_overrides)
    load_hf_weights(chunks, arch, hf_dir)
    for chunk in chunks:
        chunk.train(trainable)
        for p in chunk.parameters():
            p.requires_grad_(trainable)
    return chunks, arch


def __getattr__(name: str):  # lazy re-exports: keep `import rlad_megatron.models` light
    if name in ("load_teacher", "check_tokenizer_compatible", "TokenizerMismatchError"):
        from rlad_megatron.models import teacher  # lazy: keeps `import rlad_megatron.models` light

        return getattr(teacher, name)
    if name in ("iter_hf_tensors", "export_hf_checkpoint"):
        from rlad_megatron.models import hf_export  # lazy: keeps `import rlad_megatron.models` light

        return getattr(hf_export, name)
    if name in ("load_hf_weights", "HFCheckpointError"):
        from rlad_megatron.models import hf_loader  # lazy: keeps `import rlad_megatron.models` light

        return getattr(hf_loader, name)
    raise AttributeError(f"module 'rlad_megatron.models' has no attribute {name!r}")
