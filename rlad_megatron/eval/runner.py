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


def run_eval(model_dir: str, task_name: str, data_file: str, k: int, out_dir: str, *,
             max_prompt_tokens: int = 1024, max_tokens: int = 512, temperature: float = DEFAULT_TEMPERATURE,
             top_p: float = DEFAULT_TOP_P, seed: int = 0, limit: int | None = None, bad_rows: str = "skip",
             pass_ks: tuple[int, ...] | None = None, batch_size: int = 64, reward_timeout_s: float = 10.0,
             task_options: Mapping[str, Any] | None = None, engine_options: Mapping[str, Any] | None = None,
             cache_dir: str | None = None, chat_template_kwargs: Mapping[str, Any] | None = None,
             truncated: str = "zero") -> EvalReport:
    """Load ``data_file`` (a local file or hub dataset name) for ``task_name``, sample ``k`` responses per prompt
    from the checkpoint in ``model_dir`` (HF layout with its tokenizer), and write ``eval.json``, ``eval.md`` and
    ``data_report.json`` into ``out_dir``.

    engine_options: extra :class:`rlad_megatron.rollout.config.VLLMEngineConfig` fields (dtype, kv_cache_bytes, ...).
    Prompts over ``max_prompt_tokens`` and bad rows are skipped and counted (``bad_rows="error"`` to fail instead).
    chat_template_kwargs: for the chat template (``{"enable_thinking": False}``), as ``data.chat_template_kwargs``.
    truncated: "zero" (a response cut off at ``max_tokens`` counts as wrong) or "reward" (scored as it is).
    Generation stops at every stop token of the checkpoint (eos, generation-config eos list, end of turn).
    """
    from transformers import AutoTokenizer

    from rlad_megatron.rollout.config import VLLMEngineConfig

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r} is not a directory (expected a Hugging Face checkpoint)")
    if truncated not in ("zero", "reward"):
        raise ValueError(f"truncated={truncated!r}: choose 'zero' or 'reward'")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task(task_name, **dict(task_options or {}))
    dataset = load_prompt_dataset(data_file, task, tokenizer, max_prompt_tokens=max_prompt_tokens,
                                  bad_rows=bad_rows, cache_dir=cache_dir, limit=limit,
                                  chat_template_kwargs=chat_template_kwargs)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "data_report.json"), "w", encoding="utf-8") as fh:
        json.dump(dataset.report.as_dict(), fh, indent=2)
    from rlad_megatron.models.stop_tokens import stop_token_ids

    sampling = SamplingSettings(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                stop_token_ids=stop_token_ids(tokenizer, [model_dir], chat_template_kwargs),
                                seed=seed)
    # Size the engine for the longest prompt actually kept, not the budget (models with short contexts still run).
    longest = max(len(e.prompt_token_ids) for e in dataset.examples)
    options = {"max_model_len": longest + max_tokens, **dict(engine_options or {})}
    config = VLLMEngineConfig(model=model_dir, seed=seed, **options)
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
