"""The quickstart's evaluation: teacher, student before and student after on the test split, with the real vLLM
CPU engine through :func:`rlad_megatron.eval.runner.run_eval`, a printed table and ``results.json``.

Evaluations of the cached teacher and warm-started student are cached next to them (``eval-<hash>/eval.json``),
since their weights never change.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from examples.quickstart.settings import QuickstartSettings, settings_hash


def evaluate_model(model_dir: Path, test_file: Path, settings: QuickstartSettings, out_dir: Path,
                   *, cache: bool = False) -> dict[str, Any]:
    """Mean@k accuracy of the HF checkpoint ``model_dir`` on ``test_file`` (vLLM, the quickstart's eval sampling).

    Returns ``{"accuracy", "by_difficulty", "mean_reward", "mean_response_tokens", "seconds", "eval_dir"}``. With
    ``cache=True`` an earlier result in ``out_dir`` for the same settings is returned without running the engine.
    """
    ev = settings.eval
    out_dir = Path(out_dir)
    key = settings_hash(ev, str(test_file), settings.max_new_tokens)
    stamp = out_dir / "quickstart_eval.json"
    if cache and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return {**saved["result"], "cached": True}
    from rlad_megatron.eval.runner import run_eval

    started = time.perf_counter()
    report = run_eval(str(model_dir), "arithmetic", str(test_file), ev.k, str(out_dir),
                      max_prompt_tokens=32, max_tokens=settings.max_new_tokens, temperature=ev.temperature,
                      top_p=ev.top_p, seed=settings.data.seed, limit=ev.limit, bad_rows="error",
                      engine_options={"kv_cache_bytes": 64 << 20})
    result = {
        "accuracy": report.overall.mean_at_k,
        "by_difficulty": {label: row.mean_at_k for label, row in sorted(report.by_difficulty.items())},
        "mean_reward": report.overall.mean_reward,
        "mean_response_tokens": report.overall.mean_response_tokens,
        "prompts": report.overall.prompts,
        "seconds": round(time.perf_counter() - started, 1),
        "eval_dir": str(out_dir),
    }
    stamp.write_text(json.dumps({"key": key, "result": result}, indent=2))
    return result


def format_table(rows: dict[str, dict[str, Any]], k: int) -> str:
    """A plain-text table: one row per model, overall Mean@k then one column per difficulty."""
    labels = sorted({d for r in rows.values() for d in r.get("by_difficulty", {})},
                    key=lambda s: (len(s), s))
    head = ["model", f"Mean@{k}"] + labels
    lines = [head] + [[name, f"{r['accuracy']:.3f}"] + [f"{r['by_difficulty'].get(d, float('nan')):.3f}"
                                                         for d in labels] for name, r in rows.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
           for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def write_results(path: Path, *, teacher: dict[str, Any], before: dict[str, Any], after: dict[str, Any] | None,
                  steps: int, seconds: float, extra: dict[str, Any]) -> Path:
    """``results.json``: the three accuracies, steps, total seconds, and ``extra`` (paths, timings, settings)."""
    results = {
        "teacher_accuracy": teacher["accuracy"],
        "student_accuracy_before": before["accuracy"],
        "student_accuracy_after": None if after is None else after["accuracy"],
        "steps": steps,
        "seconds": round(seconds, 1),
        "evaluations": {"teacher": teacher, "student_before": before, "student_after": after},
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
