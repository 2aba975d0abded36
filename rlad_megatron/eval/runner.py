"""Evaluate a Hugging Face checkpoint with the vLLM engine: several benchmarks in one engine start
(:func:`run_benchmarks`, what ``rlad-megatron eval`` calls) or one data file (:func:`run_eval`).

vLLM is imported only inside these functions, so importing this module (or ``rlad_megatron``) never imports vLLM.
Everything a user can get wrong (model folder, engine options, tasks, data files and their first rows) is checked
before anything is written to ``out_dir`` or an engine starts.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from rlad_megatron.atomic_write import write_json
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.console import send_output_to_log
from rlad_megatron.data.check import check_source_rows
from rlad_megatron.data.prompt_dataset import DatasetError, PromptDataset, load_prompt_dataset
from rlad_megatron.eval.engine_defaults import (  # noqa: F401  (response_budget & co: this module's interface)
    DEFAULT_MAX_TOKENS, check_engine_options, default_engine_options, engine_config_fields, model_context_length,
    response_budget,
)
from rlad_megatron.eval.evaluate import DEFAULT_TEMPERATURE, DEFAULT_TOP_P, evaluate
from rlad_megatron.eval.report import EvalReport, SuiteReport
from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.models.folder_check import check_model_folder
from rlad_megatron.models.stop_tokens import stop_token_ids
from rlad_megatron.rollout.cpu_attention import cpu_attention_problem
from rlad_megatron.rollout.vllm_engine import VLLMEngine
from rlad_megatron.tasks.registry import get_task


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One benchmark of an evaluation: its name (a column of the results), data source, task and loading."""

    name: str
    source: str
    task: str
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    split: str = "train"


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _build_task(s: EvalSet) -> Any:
    try:
        return get_task(s.task, **dict(s.task_options))
    except KeyError as err:
        raise ValueError(f"{s.name}: {err.args[0]}") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{s.name}: task {s.task!r}: {err}") from None


def run_benchmarks(model_dir: str, sets: Sequence[EvalSet], k: int, out_dir: str, *,
                   max_prompt_tokens: int = 1024, max_tokens: int | None = None,
                   temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, seed: int = 0,
                   limit: int | None = None, bad_rows: str = "skip", pass_ks: tuple[int, ...] | None = None,
                   batch_size: int = 64, reward_timeout_s: float = 10.0,
                   engine_options: Mapping[str, Any] | None = None, cache_dir: str | None = None,
                   chat_template_kwargs: Mapping[str, Any] | None = None, truncated: str = "zero",
                   allow_download: bool = False, rollout: Any = None, log_file: str | None = None,
                   progress: Callable[[str], None] | None = None, write: bool = True) -> SuiteReport:
    """Sample ``k`` responses per prompt of every benchmark in ``sets`` from the checkpoint in ``model_dir`` (HF
    layout with its tokenizer) through one vLLM engine, score each with its own task, and write ``eval.json``,
    ``eval.md`` (a summary table, then each benchmark by difficulty) and ``data_report.json`` into ``out_dir``.

    engine_options: :class:`rlad_megatron.config.engine.VLLMEngineConfig` fields over the defaults of
    :func:`rlad_megatron.eval.engine_defaults.default_engine_options` (``rollout``: the run config's rollout
    section, whose dtype and KV cache the engine then takes). Prompts over ``max_prompt_tokens`` and bad rows are
    skipped and counted (``bad_rows="error"`` to fail instead). truncated: "zero" (a response cut off at
    ``max_tokens`` counts as wrong) or "reward" (scored as it is). ``max_tokens`` None: 512, or less when the
    model's context leaves less room after the longest prompt. ``log_file``: once the inputs are checked, this
    process's output (vLLM's, transformers') goes there and ``progress`` lines to the terminal
    (:mod:`rlad_megatron.console`).
    """
    if truncated not in ("zero", "reward"):
        raise ValueError(f"truncated={truncated!r}: choose 'zero' or 'reward'")
    if not sets:
        raise ValueError("give at least one benchmark (--data)")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"--data: benchmark names must differ, got {names}")
    check_model_folder(model_dir, "--model", allow_download=allow_download)
    served = None if torch.cuda.is_available() else cpu_attention_problem(model_dir, "--model")
    if served:  # vLLM would load the model, then fail on its first forward pass
        raise ValueError(served)
    check_engine_options(engine_options or {})
    tasks = {s.name: _build_task(s) for s in sets}
    problems = [p for s in sets for p in check_source_rows(s.source, tasks[s.name], key=f"--data {s.name}",
                                                           fields=s.fields, split=s.split, bad_rows=bad_rows)]
    if problems:
        raise DatasetError("; ".join(problems))
    config = _engine_config(model_dir, seed, 1, engine_options or {}, rollout)  # its values checked now
    os.makedirs(out_dir, exist_ok=True)
    if log_file is not None:
        send_output_to_log(log_file, tag="eval", fresh=True)
    from transformers import AutoTokenizer  # lazy: transformers is heavy (seconds)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    datasets: dict[str, PromptDataset] = {}
    for s in sets:
        datasets[s.name] = load_prompt_dataset(s.source, tasks[s.name], tokenizer, max_prompt_tokens=max_prompt_tokens,
                                               bad_rows=bad_rows, cache_dir=cache_dir, limit=limit,
                                               chat_template_kwargs=chat_template_kwargs, split=s.split,
                                               fields=s.fields, bad_rows_key="--bad-rows")
        _say(progress, f"[eval] {s.name}: {datasets[s.name].report.summary()}")
    # Size the engine for the longest prompt actually kept, not the budget (models with short contexts still run).
    longest = max(len(e.prompt_token_ids) for d in datasets.values() for e in d.examples)
    max_tokens = response_budget(max_tokens, longest, model_context_length(model_dir))
    if "max_model_len" not in (engine_options or {}):
        config = dataclasses.replace(config, max_model_len=longest + max_tokens)

    write_json(os.path.join(out_dir, "data_report.json"), {name: d.report.as_dict() for name, d in datasets.items()},
               indent=2)

    sampling = SamplingSettings(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                stop_token_ids=stop_token_ids(tokenizer, [model_dir], chat_template_kwargs),
                                seed=seed)

    _say(progress, f"[eval] starting the vLLM engine ({config.dtype}, {config.max_model_len} tokens per sequence)")
    engine = VLLMEngine(config)
    reports: dict[str, EvalReport] = {}
    try:
        for s in sets:
            d = datasets[s.name]
            _say(progress, f"[eval] {s.name}: {len(d)} prompts x {k} samples ({s.task})")
            report = evaluate(engine, tasks[s.name], d.examples, tokenizer, k, sampling=sampling, pass_ks=pass_ks,
                              batch_size=batch_size, reward_timeout_s=reward_timeout_s,
                              credit_truncated=truncated == "reward")
            report.data = {"model_dir": model_dir, "data_file": s.source, "task": s.task, **d.report.as_dict()}
            reports[s.name] = report
    finally:
        engine.shutdown()
    suite = SuiteReport(reports=reports, data={"model_dir": model_dir, "engine": dataclasses.asdict(config)})
    if write:
        suite.write(out_dir)
    return suite


def _engine_config(model_dir: str, seed: int, max_model_len: int, given: Mapping[str, Any], rollout: Any) -> Any:
    cuda = torch.cuda.is_available()
    memory = tuple(torch.cuda.mem_get_info()) if cuda else None
    options = default_engine_options(model_dir, cuda=cuda, rollout=rollout, memory=memory, given=given)
    options = {"max_model_len": max_model_len, **options}
    try:
        config = VLLMEngineConfig(model=model_dir, seed=seed, **options)
        config.validate(prefix="--engine-option ")  # e.g. kv_cache_bytes=abc: the check names the option
    except TypeError as err:  # e.g. --engine-option seed=abc
        raise ValueError(f"--engine-option: a value of the wrong type ({err})") from None
    return config


def run_eval(model_dir: str, task_name: str, data_file: str, k: int, out_dir: str, *,
             task_options: Mapping[str, Any] | None = None, split: str = "train",
             fields: Mapping[str, str] | None = None, **kwargs: Any) -> EvalReport:
    """One data file (or folder, or ``hub:`` dataset): :func:`run_benchmarks` with a single benchmark, writing
    that benchmark's own ``eval.json``, ``eval.md`` and ``data_report.json`` into ``out_dir``."""
    name = Path(str(data_file).rstrip("/")).stem or "data"
    s = EvalSet(name=name, source=data_file, task=task_name, task_options=dict(task_options or {}),
                fields=dict(fields or {}), split=split)
    suite = run_benchmarks(model_dir, [s], k, out_dir, write=False, **kwargs)
    report = suite.reports[name]
    report.write(out_dir)

    write_json(os.path.join(out_dir, "data_report.json"),
               {key: v for key, v in report.data.items() if key not in ("model_dir", "data_file", "task")}, indent=2)
    return report
