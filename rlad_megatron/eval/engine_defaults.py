"""The evaluation engine's settings: what the flags leave open, chosen to fit the machine and the model.

Pure functions of facts passed in (CUDA present, the GPU's free/total memory, the model's ``config.json``), so each
choice is unit-tested on CPU; :func:`rlad_megatron.eval.runner.run_benchmarks` measures the facts.

- dtype: the run's (``rollout.dtype`` of ``--config``); else on a GPU the checkpoint's own (bfloat16 for a bf16 or
  fp16 checkpoint, as Qwen3's are; float32 otherwise); on CPU float32.
- memory: on a GPU the engine has the GPU to itself, so vLLM's share is what is free (at most vLLM's default 0.92,
  :func:`rlad_megatron.rollout.vllm_memory.colocated_memory_fraction`) and the KV cache fills it; never a fixed
  256 MiB (which cannot hold one 8K-token sequence of a 1.7B model). On CPU the KV cache is the run's
  ``rollout.kv_cache_mb``, else the engine's default.
``--engine-option`` values always win.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.rollout.vllm_memory import colocated_memory_fraction

DEFAULT_MAX_TOKENS = 512


def engine_config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(VLLMEngineConfig)]


def check_engine_options(engine_options: Mapping[str, Any]) -> None:
    """Unknown ``VLLMEngineConfig`` fields (or ones run_eval sets itself) are a ValueError naming them."""
    fields = set(engine_config_fields()) - {"model", "seed"}
    unknown = sorted(set(engine_options) - fields)
    if unknown:
        raise ValueError(f"--engine-option {unknown[0]}: not an engine setting; choose from "
                         f"{', '.join(sorted(fields))}")


def _model_config(model_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_context_length(model_dir: str) -> int | None:
    """``max_position_embeddings`` of the model's config.json (None when absent)."""
    value = _model_config(model_dir).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def model_dtype(model_dir: str) -> str | None:
    """The checkpoint's own dtype (``dtype`` or ``torch_dtype`` of its config.json), or None."""
    config = _model_config(model_dir)
    value = config.get("dtype") or config.get("torch_dtype")
    return value if isinstance(value, str) else None


def response_budget(max_tokens: int | None, longest_prompt: int, context: int | None) -> int:
    """The response budget: ``max_tokens`` when given (an error when prompt + budget exceed the model's context),
    else the default, shortened to what the model's context leaves after the longest prompt."""
    room = None if context is None else context - longest_prompt
    if room is not None and room < 1:
        raise ValueError(f"the longest prompt has {longest_prompt} tokens, the model's context length is {context}: "
                         f"no room for a response; lower --max-prompt-tokens")
    if max_tokens is None:
        return DEFAULT_MAX_TOKENS if room is None else min(DEFAULT_MAX_TOKENS, room)
    if room is not None and max_tokens > room:
        raise ValueError(f"--max-tokens {max_tokens} + the longest prompt ({longest_prompt} tokens) exceeds the "
                         f"model's context length {context} (max_position_embeddings): use --max-tokens {room} or "
                         f"less, or lower --max-prompt-tokens")
    return max_tokens


def default_engine_options(model_dir: str, *, cuda: bool, rollout: Any = None,
                           memory: tuple[int, int] | None = None,
                           given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The engine settings the evaluation picks (see the module docstring), for the ``VLLMEngineConfig`` fields
    ``given`` (``--engine-option``) leaves open. ``rollout``: the run config's rollout section (``--config``);
    ``memory``: (free, total) bytes of the GPU, measured when the engine is about to start."""
    given = dict(given or {})
    options: dict[str, Any] = {}
    if "dtype" not in given:
        if rollout is not None:
            options["dtype"] = rollout.dtype
        elif cuda:
            options["dtype"] = "bfloat16" if model_dtype(model_dir) in ("bfloat16", "float16") else "float32"
    if cuda:
        if memory is not None and not {"gpu_memory_utilization", "kv_cache_bytes"} & set(given):
            options["gpu_memory_utilization"] = colocated_memory_fraction(*memory, learner_shares_gpu=False)
    elif rollout is not None and "kv_cache_bytes" not in given:
        options["kv_cache_bytes"] = int(rollout.kv_cache_mb) << 20
    return {**options, **given}
