"""``rlad-megatron eval``: Mean@k / Pass@k of a Hugging Face checkpoint on one or several benchmarks (vLLM engine).

    rlad-megatron eval --model ckpt/hf --task knights_knaves --data kk/test.jsonl --k 8 --out runs/eval_kk
    rlad-megatron eval --model ckpt/hf --task math --data aime24=data/aime24.jsonl,math500=data/math500.jsonl \\
        --data gpqa_diamond=data/gpqa_diamond.jsonl --k 8 --out runs/eval      # one engine, one table, one file

Each benchmark is scored by its own task: ``--task NAME=TASK``, else the task of a benchmark
``rlad-megatron data prepare`` knows by that name (gpqa_diamond: multiple_choice), else ``--task TASK``, else the
``--config`` run's ``data.task``. The console shows progress lines and the result table; vLLM's and the other
libraries' messages go to ``<out>/eval.log``. Registered into the top-level CLI by :func:`register`; the work is
:func:`rlad_megatron.eval.runner.run_benchmarks`.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def _parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse (numbers, booleans), else kept as strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _scoring(args: argparse.Namespace) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    """(task, task options, chat template kwargs, truncated) of a one-task command (``teacher-trust``: ``--task``
    one name): from ``--config`` (scored as that run trains) and the flags, which win."""
    task, options, template, truncated = args.task, {}, {}, "zero"
    if args.config:
        # lazy: the CLI registers every command; a command's imports wait until it runs
        from rlad_megatron.config import load_run_config
        from rlad_megatron.tasks.registry import training_task_options

        run = load_run_config(args.config)
        task = task or run.data.task
        if task == run.data.task:
            options = training_task_options(task, run.data.task_options)
        template = dict(run.data.chat_template_kwargs)
        truncated = "reward" if run.rollout.truncated == "reward" else "zero"  # mask: cut-offs count as wrong
    if not task:
        raise ValueError("give --task (or --config with a run config naming data.task)")
    options.update(_parse_options(args.task_option, "--task-option"))
    template.update(_parse_options(args.chat_template_kwarg, "--chat-template-kwarg"))
    return task, options, template, args.truncated or truncated


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    """``a=x,b=y`` (repeatable) as ``{"a": "x", "b": "y"}``."""
    out: dict[str, str] = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not key or not value:
                raise ValueError(f"{flag} expects NAME=VALUE[,NAME=VALUE...], got {part!r}")
            out[key.strip()] = value.strip()
    return out


def parse_data(items: list[str]) -> list[tuple[str, str]]:
    """``--data`` values: ``PATH`` (named after the file) or ``NAME=PATH``, comma-separated and repeatable."""
    out = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, path = part.partition("=")
            if not sep:
                path, name = part, Path(part.rstrip("/")).stem or part
            if not name or not path:
                raise ValueError(f"--data expects PATH or NAME=PATH, got {part!r}")
            out.append((name.strip(), path.strip()))
    return out


def _task_flags(items: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--task TASK`` (the default) and ``--task NAME=TASK`` (one benchmark's)."""
    default, per_name = None, {}
    for item in items:
        name, sep, task = item.partition("=")
        if sep and name and task and ":" not in name:
            per_name[name] = task
        else:
            default = item
    return default, per_name


def eval_sets(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """The benchmarks of an ``eval`` command line and the run settings (chat template kwargs, truncated, the run's
    rollout section): ``--config`` (scored as that run trains) under the flags, which win."""
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.data.benchmarks import BENCHMARKS
    from rlad_megatron.eval.runner import EvalSet
    from rlad_megatron.tasks.registry import check_task_reference, training_task_options

    default, per_name = _task_flags(args.task)
    run_task, run_options, template, truncated, rollout = None, {}, {}, "zero", None
    fields: dict[str, str] = {}
    split = None
    if args.config:
        # lazy: the CLI registers every command; a command's imports wait until it runs
        from rlad_megatron.config import load_run_config

        run = load_run_config(args.config)
        run_task, run_options = run.data.task, dict(run.data.task_options)
        template, fields = dict(run.data.chat_template_kwargs), dict(run.data.fields)
        truncated = "reward" if run.rollout.truncated == "reward" else "zero"  # mask: cut-offs count as wrong
        split, rollout = run.data.eval_split or run.data.split, run.rollout
    template.update(_parse_options(args.chat_template_kwarg, "--chat-template-kwarg"))
    fields.update(_pairs(args.fields, "--fields"))
    flag_options = _parse_options(args.task_option, "--task-option")
    data = parse_data(args.data)
    unknown = sorted(set(per_name) - {name for name, _ in data})
    if unknown:
        raise ValueError(f"--task {unknown[0]}=...: no benchmark named {unknown[0]!r} in --data")
    sets = []
    for name, source in data:
        known = BENCHMARKS.get(name)
        task = per_name.get(name) or (known.task if known else None) or default or run_task
        if not task:
            raise ValueError("give --task (or --config with a run config naming data.task)")
        problem = check_task_reference(task, key="--task")
        if problem:
            raise ValueError(problem)
        options = training_task_options(task, run_options) if task == run_task else {}
        if task == (default or run_task):
            options.update(flag_options)
        sets.append(EvalSet(name=name, source=source, task=task, task_options=options, fields=fields,
                            split=args.split or split or "train"))
    settings = {"chat_template_kwargs": template, "truncated": args.truncated or truncated, "rollout": rollout}
    return sets, settings


def _run(args: argparse.Namespace) -> int:
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.console import say
    from rlad_megatron.data.prompt_dataset import DatasetError
    from rlad_megatron.eval import runner

    try:
        sets, settings = eval_sets(args)
        engine_options = _parse_options(args.engine_option, "--engine-option")
        suite = runner.run_benchmarks(
            args.model, sets, args.k, args.out, max_prompt_tokens=args.max_prompt_tokens,
            max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            limit=args.limit, bad_rows=args.bad_rows, engine_options=engine_options,
            allow_download=args.allow_download, reward_timeout_s=args.reward_timeout,
            log_file=os.path.join(args.out, "eval.log"), progress=say, **settings)
    except (DatasetError, FileNotFoundError, KeyError, ValueError, DiskFullError) as err:
        say(f"rlad-megatron eval: {err.args[0] if isinstance(err, KeyError) else err}")
        return 2
    table = suite.summary_markdown() if len(suite.reports) > 1 else next(iter(suite.reports.values())).to_markdown()
    say(table.rstrip("\n"), stdout=True)
    say(f"wrote {args.out}/eval.json and {args.out}/eval.md (vLLM's messages: {args.out}/eval.log)", stdout=True)
    return 0


def register(sub: Any) -> None:
    """Add the ``eval`` subcommand to the top-level CLI's subparsers."""
    p = sub.add_parser("eval", help="Mean@k / Pass@k of a checkpoint on one or several benchmarks (vLLM engine)")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory (with its tokenizer)")
    p.add_argument("--task", action="append", default=[], metavar="TASK | NAME=TASK",
                   help="task of the benchmarks: arithmetic, knights_knaves, math, multiple_choice, your own "
                        "'file.py:function'; NAME=TASK for one benchmark (repeatable; or --config)")
    p.add_argument("--data", action="append", required=True, metavar="PATH | NAME=PATH[,NAME=PATH...]",
                   help="benchmark data: a .jsonl/.json/.parquet/.arrow/.csv file, a dataset folder or "
                        "hub:ORG/NAME[:CONFIG]; several as aime24=a.jsonl,math500=b.jsonl (repeatable)")
    p.add_argument("--split", default=None,
                   help="split of dataset folders and hub datasets (default: the --config's data.eval_split or "
                        "data.split, else train; a file is read whole)")
    p.add_argument("--fields", action="append", default=[], metavar="FIELD=COLUMN[,...]",
                   help="column mapping as data.fields, e.g. prompt=question,answer=solution.value (repeatable)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt (Mean@k, Pass@k)")
    p.add_argument("--out", required=True, help="output folder for eval.json, eval.md, data_report.json, eval.log")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="response budget in tokens (default: 512, or what the model's context length leaves)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N valid prompts of each")
    p.add_argument("--bad-rows", choices=("error", "skip"), default="skip")
    p.add_argument("--reward-timeout", type=float, default=10.0,
                   help="seconds a reward may take on one sample (then reward 0, counted)")
    p.add_argument("--allow-download", action="store_true",
                   help="let a hub id (org/name) given as --model be downloaded (default: local folders only)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor option of the --task (default) task, e.g. correct=1.0 (repeatable)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="VLLMEngineConfig field, e.g. dtype=bfloat16 or kv_cache_bytes=67108864 (repeatable; "
                        "default: the --config run's dtype and KV cache, on a GPU its free memory)")
    p.add_argument("--chat-template-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="chat template argument, e.g. enable_thinking=false for Qwen3's non-thinking mode "
                        "(repeatable; as data.chat_template_kwargs in a run config)")
    p.add_argument("--truncated", choices=("zero", "reward"), default=None,
                   help="a response cut off at --max-tokens: zero (counts as wrong, the default) or reward "
                        "(scored as it is)")
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="score as this run config trains: its data.task, data.task_options (over the task's "
                        "training defaults), data.fields, data.chat_template_kwargs, rollout.truncated, and its "
                        "engine dtype and KV cache; flags given here win")
    p.set_defaults(func=_run)
