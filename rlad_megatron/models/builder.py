"""Build this rank's Megatron ``GPTModel`` (one pipeline stage, or one virtual chunk) for a :class:`ModelArch`.

The model is described by a layer spec: Megatron's local spec (torch RMSNorm, SwiGLU MLP, fused QKV) on CPU, the
Transformer Engine spec when TE is importable and CUDA is available (the two name the input norms differently; the
name table in :mod:`rlad_megatron.models.name_map` knows both). RoPE uses the checkpoint's base; llama3 scaling
is applied with the checkpoint's own parameters (Megatron's built-in switch hard-codes Llama 3.1's).
"""
from __future__ import annotations

import copy
import importlib.util
import math

import torch

from rlad_megatron.models.hf_config import DEFAULT_VOCAB_DIVISOR, ModelArch, padded_vocab_size


def use_transformer_engine() -> bool:
    """True when the TE layer spec can run here (TE importable and a CUDA device present)."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


RECOMPUTE_CHOICES: tuple[str, ...] = ("none", "selective", "full")


def recompute_fields(recompute: str = "none", num_layers: int = 1) -> dict[str, object]:
    """``TransformerConfig`` fields of activation recomputation (``parallel.recompute``).

    - "selective": Megatron's selective recompute of the attention core (``recompute_modules=["core_attn"]``): the
      ``[b, heads, s, s]`` scores of the unfused attention (local spec) are recomputed instead of saved. With TE's
      fused (flash) attention nothing of that size is saved anyway, so it then saves little.
    - "full": whole layers, ``num_layers`` per checkpointed chunk (``recompute_method="uniform"``): only each
      chunk's input is kept, and one chunk's activations are rebuilt during its backward.
    Both run without Transformer Engine (the CPU patches restore the RNG state for the recomputation).
    """
    if recompute not in RECOMPUTE_CHOICES:
        raise ValueError(f"recompute={recompute!r}: choose one of {list(RECOMPUTE_CHOICES)}")
    if recompute == "none":
        return {}
    if recompute == "selective":
        return dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    if num_layers < 1:
        raise ValueError(f"recompute_num_layers must be >= 1, got {num_layers}")
    return dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=num_layers)


def check_context_parallel(context_parallel: int) -> None:
    """Raise ``ValueError`` at job start for a context-parallel size that cannot run. Any CP >= 1 runs: with
    Transformer Engine its attention does the ring exchange of keys/values; without it (CPU, GPU without TE) the
    local spec's core attention is :class:`~rlad_megatron.models.cp_attention.ContextParallelDotProductAttention`
    (all-gathered keys/values, see :func:`layer_spec`)."""
    if context_parallel < 1:
        raise ValueError(f"parallel.context_parallel={context_parallel}: must be >= 1 (1 = no context parallelism)")


def layer_spec(arch: ModelArch, *, te: bool | None = None):
    """The transformer layer ``ModuleSpec`` for ``arch`` (``te=None``: TE when :func:`use_transformer_engine`)."""
    from megatron.core.models.gpt import gpt_layer_specs  # lazy: megatron-core is heavy (seconds)

    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    te = use_transformer_engine() if te is None else te
    experts = arch.num_experts or None
    if te:  # TE's attention takes the CP group from the parallel state (context_parallel_size in the config)
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(
            num_experts=experts, moe_grouped_gemm=False, qk_layernorm=arch.qk_norm)
    spec = gpt_layer_specs.get_gpt_layer_local_spec(num_experts=experts, moe_grouped_gemm=False,
                                                    qk_layernorm=arch.qk_norm, normalization="RMSNorm")
    if ps.model_parallel_is_initialized() and ps.get_context_parallel_world_size() > 1:
        spec = with_context_parallel_attention(spec)
    return spec


def with_context_parallel_attention(spec):
    """A copy of the local layer ``spec`` whose core attention works under context parallelism (Megatron's local
    ``DotProductAttention`` refuses CP > 1): :class:`~rlad_megatron.models.cp_attention.
    ContextParallelDotProductAttention`."""
    from rlad_megatron.models.cp_attention import ContextParallelDotProductAttention  # lazy: it imports megatron-core

    spec = copy.deepcopy(spec)
    spec.submodules.self_attention.submodules.core_attention = ContextParallelDotProductAttention
    return spec


def rope_inv_freq(arch: ModelArch, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RoPE inverse frequencies ``[head_dim // 2]`` for ``arch``, with llama3 scaling when configured.

    llama3: wavelengths longer than ``original_max / low_freq_factor`` are slowed by ``factor``; shorter than
    ``original_max / high_freq_factor`` are kept; in between, a linear blend in ``original_max / wavelength``.
    """
    dim = arch.head_dim
    inv = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim))
    s = arch.rope_scaling
    if s is None:
        return inv.to(dtype)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    blend = ((old_len / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    scaled = (1 - blend) * inv / factor + blend * inv
    out = torch.where(wavelen > old_len / low, inv / factor, torch.where(wavelen < old_len / high, inv, scaled))
    return out.to(dtype)


def build_gpt_model(
    arch: ModelArch,
    config,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    padded_vocab: int | None = None,
    te: bool | None = None,
):
    """One ``GPTModel`` for this rank: the layers of its pipeline stage (and virtual stage ``vp_stage``).

    ``pre_process``/``post_process`` default to "first/last pipeline stage". ``padded_vocab`` defaults to
    ``padded_vocab_size(arch.vocab_size, tp)``. Embeddings and output layer are shared when the checkpoint ties
    them. The weights are whatever ``config`` initialises (nothing, by default): load them with ``hf_loader``.
    """
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)
    from megatron.core.models.gpt import GPTModel

    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    tp = config.tensor_model_parallel_size
    vocab = padded_vocab or padded_vocab_size(arch.vocab_size, tp, DEFAULT_VOCAB_DIVISOR)
    if vocab % tp or vocab < arch.vocab_size:
        raise ValueError(f"padded vocab {vocab} must be >= vocab_size {arch.vocab_size} and divisible by tp={tp}")
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch, te=te),
        vocab_size=vocab,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        vp_stage=vp_stage,
    )
    _mark_tensor_parallel(model)
    rotary = getattr(model, "rotary_pos_emb", None)
    if rotary is not None:
        rotary.inv_freq = rope_inv_freq(arch).to(rotary.inv_freq.device)
    return model


def _mark_tensor_parallel(model: torch.nn.Module) -> None:
    """Set ``tensor_model_parallel``/``partition_dim`` on TP-split weights. Megatron sets them only while randomly
    initialising (``perform_initialization=True``); grad-norm and optimizer code rely on them."""
    from megatron.core import tensor_parallel as mtp  # lazy: megatron-core is heavy (seconds)

    dims = {mtp.ColumnParallelLinear: 0, mtp.VocabParallelEmbedding: 0, mtp.RowParallelLinear: 1}
    for module in model.modules():
        dim = next((d for cls, d in dims.items() if isinstance(module, cls)), None)
        weight = getattr(module, "weight", None)
        if dim is not None and isinstance(weight, torch.nn.Parameter) and not hasattr(weight, "partition_dim"):
            mtp.set_tensor_model_parallel_attributes(weight, True, dim, 1)
