"""Tiny random Hugging Face causal LMs (Llama, Qwen2, Qwen3), built locally with ``transformers`` (no hub).

    path = make_tiny_hf_model(tmp_path / "qwen3", family="qwen3")
    model = AutoModelForCausalLM.from_pretrained(path)      # fp32, random weights, char tokenizer

The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors`` and the tokenizer files, as
``save_pretrained`` writes them. Same arguments and seed give the same bytes of weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
#: MoE settings of the tiny MoE families (override with ``moe=``): every layer sparse.
TINY_MOE: dict[str, Any] = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)


def _config(family: str, common: dict[str, Any], moe: dict[str, Any] | None = None):
    if family == "llama":
        from transformers import LlamaConfig  # lazy: transformers is heavy (seconds)

        return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
    if family == "qwen2":
        from transformers import Qwen2Config  # lazy: transformers is heavy (seconds)

        return Qwen2Config(**common, use_sliding_window=False)  # Qwen2 always has a bias on q/k/v
    if family == "qwen3":
        from transformers import Qwen3Config  # lazy: transformers is heavy (seconds)

        return Qwen3Config(**common, attention_bias=False, use_sliding_window=False)
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig  # lazy: transformers is heavy (seconds)

        return Qwen3MoeConfig(**common, **{**TINY_MOE, **(moe or {})}, attention_bias=False,
                              use_sliding_window=False, decoder_sparse_step=1, mlp_only_layers=[])
    if family == "qwen2_moe":
        from transformers import Qwen2MoeConfig  # lazy: transformers is heavy (seconds)

        settings = {**TINY_MOE, "norm_topk_prob": False, "shared_expert_intermediate_size": 48, **(moe or {})}
        return Qwen2MoeConfig(**common, **settings, use_sliding_window=False, decoder_sparse_step=1,
                              mlp_only_layers=[])
    raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES}")


def _model_class(family: str):
    import transformers  # lazy: transformers is heavy (seconds)

    return {
        "llama": transformers.LlamaForCausalLM,
        "qwen2": transformers.Qwen2ForCausalLM,
        "qwen3": transformers.Qwen3ForCausalLM,
        "qwen2_moe": transformers.Qwen2MoeForCausalLM,
        "qwen3_moe": transformers.Qwen3MoeForCausalLM,
    }[family]


def make_tiny_hf_model(
    out_dir: str | Path,
    family: str = "llama",
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    vocab_size: int | None = None,
    tokenizer: Any = None,
    head_dim: int | None = None,
    rope_theta: float = 10000.0,
    max_position_embeddings: int = 512,
    rms_norm_eps: float = 1e-6,
    rope_scaling: dict[str, Any] | None = None,
    moe: dict[str, Any] | None = None,
) -> Path:
    """Build a random fp32 ``<Family>ForCausalLM`` and ``save_pretrained`` it (safetensors) with a tokenizer.

    ``tokenizer`` defaults to the project's char tokenizer (``build_char_tokenizer()``); ``vocab_size`` defaults to
    the tokenizer's size (it may be given larger, as hub models pad their embeddings). Weights are drawn from
    ``torch.manual_seed(seed)`` with a normal std of 0.02, plus non-trivial norm weights and biases (drawn too, so
    that a loader that forgets a norm or a bias is caught). The MoE families (``qwen2_moe`` with its shared
    expert, ``qwen3_moe``) take ``moe`` settings over :data:`TINY_MOE`; their router weights have std 1. ``rope_scaling`` is a transformers ``rope_parameters``
    dict without ``rope_theta`` (e.g. ``{"rope_type": "llama3", "factor": 8.0, ...}``). Returns ``Path(out_dir)``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {FAMILIES}")
    if tokenizer is None:
        from rlad_megatron.data.char_tokenizer import build_char_tokenizer  # lazy: it imports transformers

        tokenizer = build_char_tokenizer()
    if vocab_size is None:
        vocab_size = len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="silu",
        rope_parameters=dict(rope_scaling or {"rope_type": "default"}, rope_theta=rope_theta),
        # Qwen3Config's own default head_dim is 128 whatever the width; pin hidden/heads unless asked otherwise.
        head_dim=head_dim if head_dim is not None else hidden_size // num_heads,
        dtype="float32",
    )
    config = _config(family, common, moe)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu_rng = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _model_class(family)(config).to(torch.float32)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.copy_(1.0 + 0.1 * torch.randn_like(param))
                elif name.endswith("mlp.gate.weight"):  # MoE router: decisive top-k (no near-ties)
                    param.copy_(torch.randn_like(param))
                elif name.endswith(".bias"):
                    param.copy_(0.02 * torch.randn_like(param))
                else:
                    param.copy_(0.02 * torch.randn_like(param))
    finally:
        torch.set_rng_state(cpu_rng)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
