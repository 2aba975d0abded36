"""``run_eval``: evaluate a Hugging Face checkpoint on a task's data file with the vLLM engine.

What ``rlad-megatron eval`` calls. vLLM is imported only inside :func:`run_eval`, so importing this module (or
``rlad_megatron``) never imports vLLM.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.tasks.registry import get_task
from rlad_megatron.eval.evaluate import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, evaluate
from rlad_megatron.eval.report import EvalReport
from rlad_megatron.rollout.base import SamplingSettings


DEFAULT_MAX_TOKENS = 512


def engine_config_fields() -> list[str]:
    import dataclasses

    from rlad_megatron.rollout.config import VLLMEngineConfig

    return [f.name for f in dataclasses.fields(VLLMEngineConfig)]


def check_engine_options(engine_options: Mapping[str, Any]) -> None:
    """Unknown ``VLLMEngineConfig`` fields (or ones run_eval sets itself) are a ValueError naming them."""
    fields = set(engine_config_fields()) - {"model", "seed"}
    unknown = sorted(set(engine_options) - fields)
    if unknown:
        raise ValueError(f"--engine-option {unknown[0]}: not an engine setting; choose from "
                         f"{', '.join(sorted(fields))}")


def model_context_length(model_dir: str) -> int | None:
    """``max_position_embeddings`` of the model's config.json (None when absent)."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


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


def run_eval(model_dir: str, task_name: str, data_file: str, k: int, out_dir: str, *,
             max_prompt_tokens: int = 1024, max_tokens: int | None = None, temperature: float = DEFAULT_TEMPERATURE,
             top_p: float = DEFAULT_TOP_P, seed: int = 0, limit: int | None = None, bad_rows: str = "skip",
             pass_ks: tuple[int, ...] | None = None, batch_size: int = 64, reward_timeout_s: float = 10.0,
             task_options: Mapping[str, Any] | None = None, engine_options: Mapping[str, Any] | None = None,
             cache_dir: str | None = None, chat_template_kwargs: Mapping[str, Any] | None = None,
             truncated: str = "zero", allow_download: bool = False) -> EvalReport:
    """Load ``data_file`` (a local file or hub dataset name) for ``task_name``, sample ``k`` responses per prompt
    from the checkpoint in ``model_dir`` (HF layout with its tokenizer), and write ``eval.json``, ``eval.md`` and
    ``data_report.json`` into ``out_dir``.

    engine_options: extra :class:`rlad_megatron.rollout.config.VLLMEngineConfig` fields (dtype, kv_cache_bytes, ...).
    Prompts over ``max_prompt_tokens`` and bad rows are skipped and counted (``bad_rows="error"`` to fail instead).
    chat_template_kwargs: for the chat template (``{"enable_thinking": False}``), as ``data.chat_template_kwargs``.
    truncated: "zero" (a response cut off at ``max_tokens`` counts as wrong) or "reward" (scored as it is).
    Generation stops at every stop token of the checkpoint (eos, generation-config eos list, end of turn).
    ``max_tokens`` None: 512, or less when the model's context length leaves less room after the longest prompt.
    """
    from transformers import AutoTokenizer

    from rlad_megatron.rollout.config import VLLMEngineConfig

    from rlad_megatron.models.folder_check import check_model_folder

    # Everything a user can get wrong is checked before anything is written to out_dir or an engine starts.
    if truncated not in ("zero", "reward"):
        raise ValueError(f"truncated={truncated!r}: choose 'zero' or 'reward'")
    check_model_folder(model_dir, "--model", allow_download=allow_download)
    check_engine_options(engine_options or {})
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task(task_name, **dict(task_options or {}))
    dataset = load_prompt_dataset(data_file, task, tokenizer, max_prompt_tokens=max_prompt_tokens,
                                  bad_rows=bad_rows, cache_dir=cache_dir, limit=limit,
                                  chat_template_kwargs=chat_template_kwargs)
    # Size the engine for the longest prompt actually kept, not the budget (models with short contexts still run).
    longest = max(len(e.prompt_token_ids) for e in dataset.examples)
    max_tokens = response_budget(max_tokens, longest, model_context_length(model_dir))
    options = {"max_model_len": longest + max_tokens, **dict(engine_options or {})}
    try:
        config = VLLMEngineConfig(model=model_dir, seed=seed, **options)
        config.validate()
    except TypeError as err:  # e.g. --engine-option kv_cache_bytes=abc
        raise ValueError(f"--engine-option: a value of the wrong type ({err})") from None
    os.makedirs(out_dir, exist_ok=True)
    from rlad_megatron.atomic_write import write_json

    write_json(os.path.join(out_dir, "data_report.json"), dataset.report.as_dict(), indent=2)
    from rlad_megatron.models.stop_tokens import stop_token_ids

    sampling = SamplingSettings(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                stop_token_ids=stop_token_ids(tokenizer, [model_dir], chat_template_kwargs),
                                seed=seed)
    from rlad_megatron.rollout.vllm_engine import VLLMEngine  # the only place this module touches vLLM

    engine = VLLMEngine(config)
    try:
        report = evaluate(engine, task, dataset.examples, tokenizer, k, sampling=sampling, pass_ks=pass_ks,
                          batch_size=batch_size, reward_timeout_s=reward_timeout_s,
                          credit_truncated=truncated == "reward")
    finally:
        engine.shutdown()
    report.data = {"model_dir": model_dir, "data_file": data_file, **dataset.report.as_dict()}
    report.write(out_dir)
    return report
