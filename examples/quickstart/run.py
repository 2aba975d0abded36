"""The quickstart, start to end (``make demo`` = ``python -m examples.quickstart``):

1. demo data (arithmetic, difficulty = digits) -> ``<root>/data/{train,test}.jsonl``
2. a tiny teacher trained on the reference chains of thought (cached in ``<root>/cache/teacher-<hash>``) and a
   smaller student with a brief supervised warm start (``<root>/cache/student-<hash>``)
3. RLAD: ``torchrun --nproc-per-node 2 -m rlad_megatron.cli train --config <root>/run/config.yaml`` (TP=2, gloo,
   Megatron learner, colocated vLLM CPU engine)
4. teacher, student before and student after evaluated with vLLM on the test split; a table; ``results.json``
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from rlad_megatron.console import log_path, say
from examples.quickstart.evaluation import evaluate_model, format_table, write_results
from examples.quickstart.prepare import prepare_data, prepare_model
from examples.quickstart.settings import QuickstartSettings
from examples.quickstart.train import run_training, write_train_config


def _say(text: str) -> None:
    say(text)


def _point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target`` (replacing an older link, never a real folder)."""
    if link.is_symlink():
        link.unlink()
    if not link.exists():
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def run_quickstart(settings: QuickstartSettings, root: Path, *, train: bool = True,
                   log: Callable[[str], None] = _say) -> dict[str, Any]:
    """Run the whole quickstart under ``root``; returns the results written to ``root/results.json``."""
    started = time.perf_counter()
    root = Path(root).resolve()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    files = prepare_data(settings.data, root / "data")
    log(f"[quickstart] data: {files.train} ({settings.data.n_train}), {files.test} ({settings.data.n_test}), "
        f"{settings.data.min_digits}..{settings.data.max_digits} digits")
    teacher = prepare_model("teacher", settings.teacher, settings, files, root / "cache", log)
    student = prepare_model("student", settings.student, settings, files, root / "cache", log)
    for kind, prepared in (("teacher", teacher), ("student", student)):
        _point_link(root / kind, prepared.path)  # stable paths for configs/quickstart.yaml
    timings["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    log("[quickstart] evaluating teacher and student (before) with vLLM ...")
    eval_teacher = evaluate_model(teacher.path, files.test, settings, teacher.path / "eval", cache=True)
    eval_before = evaluate_model(student.path, files.test, settings, student.path / "eval", cache=True)
    log(f"[quickstart] teacher {eval_teacher['accuracy']:.3f}, student before {eval_before['accuracy']:.3f}")
    timings["eval_before"] = time.perf_counter() - t

    run_dir = root / "run"
    eval_after = None
    if train:
        t = time.perf_counter()
        config = write_train_config(settings, teacher.path, student.path, files, run_dir)
        log(f"[quickstart] training: {settings.rl.algorithm} for {settings.rl.steps} steps on "
            f"{settings.rl.nproc} processes (TP={settings.rl.tensor_parallel}); config {config}")
        # A repeated demo starts a new run; the previous one is moved to run.old-<time>, not deleted.
        run_training(config, settings.rl.nproc, overwrite=True, log_file=run_dir / "console.log")
        timings["train"] = time.perf_counter() - t
        t = time.perf_counter()
        eval_after = evaluate_model(run_dir / "hf", files.test, settings, run_dir / "eval")
        timings["eval_after"] = time.perf_counter() - t

    rows = {"teacher": eval_teacher, "student (before)": eval_before}
    if eval_after is not None:
        rows["student (after)"] = eval_after
    seconds = time.perf_counter() - started
    results_path = write_results(
        root / "results.json", teacher=eval_teacher, before=eval_before, after=eval_after,
        steps=settings.rl.steps if train else 0, seconds=seconds,
        extra={"algorithm": settings.rl.algorithm, "timings": {k: round(v, 1) for k, v in timings.items()},
               "teacher_dir": str(teacher.path), "student_dir": str(student.path),
               "teacher_cached": teacher.cached, "student_cached": student.cached,
               "teacher_preparation": teacher.info, "student_preparation": student.info,
               "run_dir": str(run_dir), "settings": settings.to_dict()},
    )
    say("\n" + format_table(rows, settings.eval.k), stdout=True)
    say(f"\nresults:     {results_path}", stdout=True)
    if train:
        say(f"curves:      {run_dir / 'curves.png'}", stdout=True)
        say(f"metrics:     {run_dir / 'metrics.jsonl'}", stdout=True)
        say(f"tensorboard: tensorboard --logdir {run_dir / 'tb'}", stdout=True)
    if log_path() is not None:
        say(f"logs:        {run_dir / 'train.log'} (training), {log_path()}", stdout=True)
    say(f"total:       {seconds:.0f} s", stdout=True)
    import json

    return json.loads(results_path.read_text())
