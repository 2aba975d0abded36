"""``rlad-megatron eval``: Mean@k / Pass@k of a Hugging Face checkpoint on a task's data file (vLLM engine).

    rlad-megatron eval --model ckpt/hf --task knights_knaves --data kk/test.jsonl --k 8 --out runs/eval_kk

Registered into the top-level CLI by :func:`register`; the work is :func:`rlad_megatron.eval.runner.run_eval`.
"""
from __future__ import annotations

import argparse
import json
import sys
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
    """(task, task options, chat template kwargs, truncated): from ``--config`` (scored as that run trains) and
    the flags, which win."""
    task, options, template, truncated = args.task, {}, {}, "zero"
    if args.config:
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


def _run(args: argparse.Namespace) -> int:
    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.data.prompt_dataset import DatasetError
    from rlad_megatron.eval.runner import run_eval

    try:
        task, task_options, template_kwargs, truncated = _scoring(args)
        engine_options = _parse_options(args.engine_option, "--engine-option")
        report = run_eval(args.model, task, args.data, args.k, args.out, max_prompt_tokens=args.max_prompt_tokens,
                          max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                          limit=args.limit, bad_rows=args.bad_rows, task_options=task_options,
                          engine_options=engine_options, chat_template_kwargs=template_kwargs,
                          truncated=truncated, allow_download=args.allow_download,
                          reward_timeout_s=args.reward_timeout)
    except (DatasetError, FileNotFoundError, KeyError, ValueError, DiskFullError) as err:
        print(f"rlad-megatron eval: {err}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    print(f"wrote {args.out}/eval.json and {args.out}/eval.md")
    return 0


def register(sub: Any) -> None:
    """Add the ``eval`` subcommand to the top-level CLI's subparsers."""
    p = sub.add_parser("eval", help="Mean@k / Pass@k of a checkpoint on a task's data (vLLM engine)")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory (with its tokenizer)")
    p.add_argument("--task", default=None, help="task name: arithmetic, knights_knaves, math, ... (or --config)")
    p.add_argument("--data", required=True, help="data file (.jsonl/.json/.parquet/.arrow), folder or hub name")
    p.add_argument("--k", type=int, default=8, help="samples per prompt (Mean@k, Pass@k)")
    p.add_argument("--out", required=True, help="output folder for eval.json, eval.md, data_report.json")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="response budget in tokens (default: 512, or what the model's context length leaves)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N valid prompts")
    p.add_argument("--bad-rows", choices=("error", "skip"), default="skip")
    p.add_argument("--reward-timeout", type=float, default=10.0,
                   help="seconds a reward may take on one sample (then reward 0, counted)")
    p.add_argument("--allow-download", action="store_true",
                   help="let a hub id (org/name) given as --model be downloaded (default: local folders only)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task constructor option, e.g. correct=1.0 (repeatable)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="VLLMEngineConfig field, e.g. kv_cache_bytes=67108864 (repeatable)")
    p.add_argument("--chat-template-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="chat template argument, e.g. enable_thinking=false for Qwen3's non-thinking mode "
                        "(repeatable; as data.chat_template_kwargs in a run config)")
    p.add_argument("--truncated", choices=("zero", "reward"), default=None,
                   help="a response cut off at --max-tokens: zero (counts as wrong, the default) or reward "
                        "(scored as it is)")
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="score as this run config trains: its data.task, data.task_options (over the task's "
                        "training defaults), data.chat_template_kwargs and rollout.truncated; flags given here win")
    p.set_defaults(func=_run)
