"""The comparison, start to end, for one task:

1. prepare (cached): data, a supervised teacher, a warm-started student (:mod:`examples.compare.prepare`)
2. plan: sft / grpo / kdrl / rlad(alpha) x seeds, plus the rlad alpha sweep, in each rollout mode (sync, async)
   (:mod:`examples.compare.plan`)
3. run every job in one ``torchrun --nproc-per-node 1`` worker: train with the product's Trainer, export the
   student, evaluate it with vLLM on the test split (:mod:`examples.compare.worker`)
4. report: ``summary.json``, ``report.md`` (table + alpha=1.0 vs grpo check, + async vs sync and the async runs'
   staleness when both modes ran) and the curve PNGs
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from examples.compare.plan import RunSpec, comparison_run_config, plan_runs
from examples.compare.prepare import Prepared, prepare_task
from examples.compare.report import (activity_table, alpha_one_check, cell_table, common_start, difficulty_table,
                                     format_mode_comparison, format_paired, format_staleness, format_table,
                                     load_results, mode_comparison, paired_differences, plot_learning_curves,
                                     plot_by_difficulty, prompt_cells, read_per_prompt, staleness_rows, summarize)
from examples.compare.settings import COMPARED_ALGORITHMS, TaskSettings
from rlad_megatron.config import run_config_to_dict

#: The folder holding the ``examples`` package.
REPO_ROOT = Path(__file__).resolve().parents[2]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def eval_spec(s: TaskSettings, prepared: Prepared, model_dir: str | None = None) -> dict[str, Any]:
    """What the worker passes to ``run_eval`` (the same for every model of a task)."""
    return {"task": s.task, "data_file": str(prepared.files.test), "k": s.eval.k, "limit": s.eval.limit,
            "temperature": s.eval.temperature, "top_p": s.eval.top_p, "max_tokens": s.rl.max_new_tokens,
            "max_prompt_tokens": s.rl.max_prompt_tokens, "model_dir": model_dir, "max_num_seqs": s.eval.max_num_seqs}


def build_jobs(s: TaskSettings, prepared: Prepared, runs: Sequence[RunSpec], task_dir: Path) -> list[dict[str, Any]]:
    """Reference evaluations (teacher, initial student) then one train+eval job per run."""
    jobs: list[dict[str, Any]] = [
        {"name": f"{s.task}/{name}", "out_dir": str(task_dir / "reference" / name), "config": None,
         "eval": eval_spec(s, prepared, str(path)), "meta": {"label": name}}
        for name, path in (("teacher", prepared.teacher), ("student (initial)", prepared.student))
    ]
    for run in runs:
        out_dir = task_dir / "runs" / run.name
        config = run_config_to_dict(comparison_run_config(run, s, prepared, out_dir / "train"))
        jobs.append({"name": f"{s.task}/{run.name}", "out_dir": str(out_dir),
                     "config": config, "eval": eval_spec(s, prepared),
                     "meta": {"label": run.label, "algorithm": run.algorithm, "alpha": run.alpha,
                              "seed": run.seed, "rollout_mode": run.rollout_mode,
                              **({"variant": run.variant} if run.variant else {})}})
    return jobs


def launch_worker(plan_path: Path, log_path: Path, *, timeout_s: float | None = None,
                  threads: int = 1) -> int:
    """One thread by default: measured on the shared 2-core machine (load ~10), a supervised step of the tiny
    teacher took 0.20 s with 1 thread and 2.9 s with 2 (OpenMP spin-waiting on oversubscribed cores).
``python -m rlad_megatron.launch_local --nproc-per-node 1 -m examples.compare.worker PLAN`` (torchrun, every socket on
    the loopback interface); output to ``log_path`` with the worker's ``[compare]`` progress lines echoed to stderr.
    Returns the exit code."""
    from rlad_megatron.launch_local import command

    cmd = command(1, "examples.compare.worker", [str(plan_path)])
    # The worker imports this package: put the repository root (the folder holding examples/) on its path.
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace", start_new_session=True)
        assert proc.stdout is not None
        started = time.perf_counter()
        for line in proc.stdout:
            log.write(line)
            if line.startswith("[compare]"):
                _say(line.rstrip())
            if timeout_s is not None and time.perf_counter() - started > timeout_s:
                os.killpg(proc.pid, 9)
                break
        return proc.wait()


def reeval_name(k: int) -> str:
    return f"reeval_k{k}"


def build_reeval_jobs(s: TaskSettings, prepared: Prepared, task_dir: Path, k: int) -> list[dict[str, Any]]:
    """Evaluation-only jobs with ``k`` samples per prompt for the reference models and every finished run (their
    exported students), written to ``<run>/reeval_k<k>/result.json``."""
    folders = [(f"{s.task}/{name}", task_dir / "reference" / name, path)
               for name, path in (("teacher", prepared.teacher), ("student (initial)", prepared.student))]
    folders += [(f"{s.task}/{d.name}", d, d / "train" / "hf") for d in sorted((task_dir / "runs").glob("*"))
                if (d / "result.json").exists()]
    return [{"name": f"{name} (k={k})", "out_dir": str(folder / reeval_name(k)), "config": None,
             "eval": {**eval_spec(s, prepared, str(model)), "k": k}} for name, folder, model in folders]


def subset_and_digits(record: dict[str, Any]) -> str:
    """carry_trap's report cell of a test record: its subset (``carry`` / ``plain``) and the digits of the longer
    operand (``carry d2``)."""
    a, b = str(record["prompt"]).rstrip("=").split("+")
    return f"{record['difficulty']} d{max(len(a), len(b))}"


def write_report(s: TaskSettings, task_dir: Path, title: str, reeval: str | None = None) -> dict[str, Any]:
    """Table, alpha=1.0 check and plots from the runs under ``task_dir``; writes ``summary.json``/``report.md``.
    ``reeval``: report the final accuracies of that later evaluation (see :func:`build_reeval_jobs`)."""
    results = load_results(task_dir, reeval)
    reference_evals: dict[str, dict[str, Any]] = {}
    for name in ("teacher", "student (initial)"):
        done = task_dir / "reference" / name / (f"{reeval}/result.json" if reeval else "result.json")
        if done.exists():
            reference_evals[name] = json.loads(done.read_text())["eval"]
    reference = {name: ev["accuracy"] for name, ev in reference_evals.items()}
    start = common_start(results)
    threshold = round(start + s.threshold_gain, 4)
    rows = summarize(results, threshold)
    checks = alpha_one_check(results)
    main = [r for r in results if r.algorithm != "rlad" or r.alpha == 0.5]
    sweep = [r for r in results if r.algorithm in ("rlad", "grpo") and not r.variant]
    pngs = {"curves": plot_learning_curves(main, task_dir / "curves_algorithms.png", f"{title}: algorithms",
                                           reference=reference),
            "sweep": plot_learning_curves(sweep, task_dir / "curves_alpha_sweep.png", f"{title}: alpha sweep",
                                          sweep=True, reference=reference),
            "reward": plot_learning_curves(main, task_dir / "curves_reward.png", f"{title}: reward (task scale)",
                                           key="reward/mean"),
            "difficulty": plot_by_difficulty(main, task_dir / "by_difficulty.png", f"{title}: by difficulty",
                                             reference=reference_evals)}
    table = format_table(rows, threshold, reference_evals)
    paired = paired_differences(results)
    lines = [f"## {title}", "", table, "",
             f"Threshold = common start {start:.3f} (mean step-1 rollout accuracy) + {s.threshold_gain:g}.", "",
             "Final accuracy by difficulty (mean over seeds):", "", difficulty_table(results, reference_evals), ""]
    if paired:
        lines += ["Paired by seed against grpo:", "", format_paired(paired), ""]
    paired_rlad = paired_differences(results, baseline="rlad a=0.5")
    if paired_rlad and any(r.variant for r in results):
        lines += ["Paired by seed against rlad a=0.5:", "", format_paired(paired_rlad, "rlad a=0.5"), ""]
    if s.task == "carry_trap":
        test_file = task_dir / "data" / "test.jsonl"
        ref_rows = {name: read_per_prompt(task_dir / "reference" / name / (f"{reeval}/eval" if reeval else "eval"))
                    for name in ("teacher", "student (initial)")}
        lines += ["Final accuracy by subset and digits of the longer operand (Mean@k pooled over the cell's prompts, "
                  "mean over seeds; prompts per cell in the header):", "",
                  cell_table(results, prompt_cells(test_file, subset_and_digits), ref_rows), ""]
    modes = mode_comparison(results)
    stale = staleness_rows(results)
    if modes:
        lines += ["Asynchronous vs synchronous rollouts (same algorithm; paired = same seed):", "",
                  format_mode_comparison(modes), ""]
    if stale:
        lines += ["Asynchronous runs: staleness from metrics.jsonl (one step off-policy: every batch after the "
                  "first is one weight version old):", "", format_staleness(stale), ""]
    lines += ["How much the clip and teacher terms act (means over steps and seeds):", "", activity_table(results), ""]
    for c in checks:
        mode = f" ({c['rollout_mode']})" if "rollout_mode" in c else ""
        lines.append(f"alpha=1.0 vs grpo, seed {c['seed']}{mode}: {c['steps']} steps x {c['keys']} metrics, "
                     f"{'identical' if c['identical'] else 'max |diff| %.3g (%s)' % (c['max_abs_diff'], c['worst_key'])}"
                     f"; final accuracy {c['final_accuracy'][0]:.3f} vs {c['final_accuracy'][1]:.3f}")
    report = "\n".join(lines) + "\n"
    (task_dir / "report.md").write_text(report)
    summary = {"task": s.task, "settings": s.to_dict(), "threshold": threshold, "start_accuracy": start, "reference": reference,
               "rows": rows, "paired_vs_grpo": paired, "paired_vs_rlad": paired_rlad, "alpha_one_vs_grpo": checks, "plots": {k: str(v) for k, v in pngs.items()},
               "async_vs_sync": modes, "staleness": stale,
               "runs": [{"name": r.name, "rollout_mode": r.rollout_mode, "final_accuracy": r.final_accuracy,
                         "eval": r.eval,
                         "train_accuracy": r.curve(), "train_reward": r.curve("reward/mean")} for r in results]}
    (task_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_comparison(s: TaskSettings, out_root: Path, *, seeds: Sequence[int], sweep_alphas: Sequence[float],
                   sweep_seeds: Sequence[int], algorithms: Sequence[str] = COMPARED_ALGORITHMS, alpha: float = 0.5,
                   timeout_s: float | None = None, reeval_k: int | None = None,
                   rollout_modes: Sequence[str] = ("sync",), log: Callable[[str], None] = _say) -> dict[str, Any]:
    """Prepare, run and report one task under ``out_root/<task>``; returns the summary (also ``summary.json``).

    ``reeval_k``: afterwards evaluate every finished run again with ``k`` samples per prompt (Mean@k has less
    sampling noise than the runs' own Mean@1) and report those accuracies. ``rollout_modes``: run every algorithm
    and seed in each of these modes ("sync", "async")."""
    started = time.perf_counter()
    task_dir = Path(out_root).resolve() / s.task
    task_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare_task(s, task_dir, log)
    prep_seconds = time.perf_counter() - started
    runs = plan_runs(s.task, seeds=seeds, algorithms=algorithms, alpha=alpha, sweep_alphas=sweep_alphas,
                     sweep_seeds=sweep_seeds, rollout_modes=rollout_modes)
    jobs = build_jobs(s, prepared, runs, task_dir)
    plan_path = task_dir / "plan.json"
    plan_path.write_text(json.dumps(jobs, indent=2))
    log(f"[compare] {s.task}: {len(runs)} runs ({s.rl.steps} steps x {s.rl.prompts_per_step} prompts x "
        f"G={s.rl.group_size}) in one worker; log {task_dir / 'worker.log'}")
    t = time.perf_counter()
    code = launch_worker(plan_path, task_dir / "worker.log", timeout_s=timeout_s)
    run_seconds = time.perf_counter() - t
    if code != 0:
        log(f"[compare] {s.task}: the worker exited with {code}; see {task_dir / 'worker.log'} and runs/*/error.txt")
    reeval = None
    if reeval_k is not None:
        t = time.perf_counter()
        reeval_path = task_dir / f"plan_{reeval_name(reeval_k)}.json"
        reeval_path.write_text(json.dumps(build_reeval_jobs(s, prepared, task_dir, reeval_k), indent=2))
        code = launch_worker(reeval_path, task_dir / f"worker_{reeval_name(reeval_k)}.log", timeout_s=timeout_s) or code
        run_seconds += time.perf_counter() - t
        reeval = reeval_name(reeval_k)
    title = f"{s.task} ({s.rl.steps} steps; final accuracy = Mean@{reeval_k or s.eval.k})"
    summary = write_report(s, task_dir, title, reeval)
    summary.update({"worker_exit_code": code, "seconds": {"prepare": round(prep_seconds, 1),
                                                          "runs": round(run_seconds, 1),
                                                          "total": round(time.perf_counter() - started, 1)}})
    (task_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
