"""``rlad-megatron teacher-trust``: how often the teacher itself is right, per prompt of a training file.

    rlad-megatron teacher-trust --teacher ckpt/teacher --task arithmetic --data train.jsonl --k 8 \\
        --out train_trust.jsonl

Samples ``k`` responses per prompt from the teacher with the vLLM engine (:func:`rlad_megatron.eval.runner.run_eval`),
scores them with the task's verifier as training does (the task's training options, through the reward guard;
``--config RUN.yaml`` takes data.task_options, chat template and rollout.truncated from a run config), and writes a
copy of the data file (JSON lines) in which every evaluated row carries ``teacher_pass_rate`` = correct / k (and
rows without an ``id`` the one the loader gave them). Rows the evaluation skipped (bad rows, prompts over
``--max-prompt-tokens``) are copied without the field. The evaluation
report (``eval.json``, ``eval.md``) goes to ``--report-dir``. Training reads the field with ``loss.teacher_trust``.

Default sampling is the teacher's own distribution (temperature 1, top-p 1): the trust is about the distribution the
loss anchors on, not about the teacher's best-decoding accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlad_megatron.data.prompt_dataset import TEACHER_PASS_RATE, _rows, id_stem, load_raw_dataset, record_id
from rlad_megatron.data.rows import prepare_row
from rlad_megatron.tasks.base import RecordError, Task


@dataclass
class TrustSummary:
    """What ``teacher-trust`` wrote: rows copied, rows with a pass rate, and how the rates are spread."""

    out_file: str
    rows: int
    rated: int
    mean_pass_rate: float
    never_correct: float
    """Fraction of rated prompts the teacher never solved (pass rate 0)."""
    always_correct: float
    """Fraction of rated prompts the teacher always solved (pass rate 1)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pass_rates(per_prompt: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{id: correct / n}`` from an evaluation report's ``per_prompt`` rows."""
    return {str(p["id"]): p["correct"] / p["n"] for p in per_prompt if p["n"] > 0}


def rows_with_pass_rates(rows: Sequence[Mapping[str, Any]], task: Task, stem: str,
                         rates: Mapping[str, float]) -> tuple[list[dict[str, Any]], int]:
    """Copies of the raw ``rows`` (absent columns, which arrive as None, dropped) with ``teacher_pass_rate`` set on
    the rows whose record id (as the data loader gives it) has a rate; and how many got one. A row without an
    ``id`` gets the one the loader derived from the source (``<stem>-<row>``), so that its id survives the copy."""
    out: list[dict[str, Any]] = []
    rated = 0
    for i, row in enumerate(rows):
        copy = {k: v for k, v in row.items() if v is not None and k != TEACHER_PASS_RATE}
        try:
            rid = record_id(task.to_record(prepare_row(dict(row))).get("id"), f"{stem}-{i}")
        except RecordError:  # a bad row: the evaluation skipped it too
            rid = None
        if rid is not None and copy.get("id") is None:
            copy["id"] = rid
        if rid is not None and str(rid) in rates:
            copy[TEACHER_PASS_RATE] = rates[str(rid)]
            rated += 1
        out.append(copy)
    return out, rated


def write_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as JSON lines, atomically (a temporary file renamed into place; a full disk: DiskFullError)."""
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.atomic_write import atomic_file

    with atomic_file(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run_teacher_trust(teacher_dir: str, task_name: str, data_file: str, k: int, out_file: str, *,
                      report_dir: str | None = None, task_options: Mapping[str, Any] | None = None,
                      cache_dir: str | None = None, **eval_options: Any) -> TrustSummary:
    """Evaluate the teacher with ``k`` samples per prompt of ``data_file`` and write the copy with pass rates.

    ``task_options`` are the task's training options already merged (as training scores); ``eval_options`` go to
    :func:`rlad_megatron.eval.runner.run_eval` (max_prompt_tokens, max_tokens, temperature, top_p, seed, bad_rows,
    engine_options, chat_template_kwargs, truncated, reward_timeout_s). ``report_dir`` defaults to
    ``<out_file without extension>_report``.
    """
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.eval.runner import run_eval
    from rlad_megatron.models.folder_check import check_model_folder
    from rlad_megatron.tasks.registry import get_task

    if not out_file.endswith(".jsonl"):
        raise ValueError(f"--out {out_file}: the copy is written as JSON lines; give a .jsonl path")
    if os.path.exists(data_file) and os.path.abspath(out_file) == os.path.abspath(data_file):
        raise ValueError(f"--out {out_file} is the input data file; give another path (the input is not changed)")
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    try:
        task = get_task(task_name, **dict(task_options or {}))
    except TypeError as err:
        raise ValueError(f"--task-option: {dict(task_options or {})} do not fit task {task_name!r} ({err})") from None
    check_model_folder(teacher_dir, "--teacher")
    report_dir = report_dir or f"{os.path.splitext(out_file)[0]}_report"
    report = run_eval(teacher_dir, task_name, data_file, k, report_dir, task_options=task_options,
                      cache_dir=cache_dir, **eval_options)
    rates = pass_rates(report.per_prompt)
    raw, _ = _rows(load_raw_dataset(data_file, cache_dir=cache_dir))
    rows, rated = rows_with_pass_rates(raw, task, id_stem(data_file), rates)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_file, rows)
    values = list(rates.values())
    summary = TrustSummary(
        out_file=out_file, rows=len(rows), rated=rated,
        mean_pass_rate=sum(values) / len(values) if values else float("nan"),
        never_correct=sum(v == 0.0 for v in values) / len(values) if values else float("nan"),
        always_correct=sum(v == 1.0 for v in values) / len(values) if values else float("nan"),
    )
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.atomic_write import write_json

    write_json(os.path.join(report_dir, "teacher_trust.json"),
               {**summary.as_dict(), "teacher": teacher_dir, "data_file": data_file, "k": k}, indent=2)
    return summary


def _run(args: argparse.Namespace) -> int:
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.data.prompt_dataset import DatasetError
    from rlad_megatron.eval.cli import _parse_options, _scoring
    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.tasks.registry import training_task_options

    try:
        task, options, template_kwargs, truncated = _scoring(args)
        options = training_task_options(task, options)  # scored as training scores (idempotent after --config)
        print(f"[teacher-trust] {args.teacher}: {args.k} samples per prompt of {args.data} (task {task})", flush=True)
        summary = run_teacher_trust(
            args.teacher, task, args.data, args.k, args.out, report_dir=args.report_dir, task_options=options,
            max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens, temperature=args.temperature,
            top_p=args.top_p, seed=args.seed, bad_rows=args.bad_rows, reward_timeout_s=args.reward_timeout,
            engine_options=_parse_options(args.engine_option, "--engine-option"),
            chat_template_kwargs=template_kwargs, truncated=truncated)
    except (DatasetError, FileNotFoundError, KeyError, ValueError, DiskFullError) as err:
        print(f"rlad-megatron teacher-trust: {err}", file=sys.stderr)
        return 2
    print(f"[teacher-trust] {summary.rated} of {summary.rows} rows rated: mean pass rate {summary.mean_pass_rate:.3f}, "
          f"never solved {summary.never_correct:.3f}, always solved {summary.always_correct:.3f}")
    print(f"wrote {summary.out_file} (field {TEACHER_PASS_RATE})")
    return 0


def register(sub: Any) -> None:
    """Add the ``teacher-trust`` subcommand to the top-level CLI's subparsers."""
    p = sub.add_parser("teacher-trust", help="per-prompt pass rate of the teacher's own samples, into a data copy")
    p.add_argument("--teacher", required=True, help="the teacher's Hugging Face checkpoint directory")
    p.add_argument("--task", default=None, help="task name (or --config)")
    p.add_argument("--data", required=True, help="training data file (.jsonl/.json/.parquet/.arrow) or folder")
    p.add_argument("--k", type=int, default=8, help="teacher samples per prompt")
    p.add_argument("--out", required=True, help="the copy of the data with teacher_pass_rate (.jsonl)")
    p.add_argument("--report-dir", default=None, help="evaluation report folder (default: <out>_report)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=None, help="response budget (default: as `eval`)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad-rows", choices=("error", "skip"), default="skip")
    p.add_argument("--reward-timeout", type=float, default=10.0)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--chat-template-kwarg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--truncated", choices=("zero", "reward"), default=None)
    p.add_argument("--config", default=None, metavar="RUN.yaml",
                   help="score as this run config trains (data.task, data.task_options, chat template, "
                        "rollout.truncated); flags given here win")
    p.set_defaults(func=_run)
