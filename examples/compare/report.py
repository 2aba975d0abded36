"""Summaries of a finished comparison: the table (final accuracy mean and spread over seeds, steps to a threshold),
the alpha=1.0 == grpo check, and learning-curve plots. Reads only files the runs wrote (``result.json`` and the
trainer's ``metrics.jsonl``), so a report can be rebuilt at any time.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlad_megatron.trainer.observability.metrics_file import is_clock_metric, read_metrics

#: Besides the clocks (``is_clock_metric``), metrics named as durations differ between two runs of the same maths.
_NOT_COMPARED_SUFFIXES = ("_s", "per_s", "seconds", "_ms")


#: Order of the arm variants in tables (after the plain algorithm).
VARIANT_ORDER: tuple[str, ...] = ("", "topk", "gate", "topk+gate")


def table_order(algorithm: str, alpha: float, rollout_mode: str = "sync",
                variant: str = "") -> tuple[int, float, int, int]:
    """Sort key of every table and plot: sft, grpo, kdrl, then rlad by decreasing alpha; an algorithm before its
    variants (+topk, +gate); a synchronous run before its asynchronous twin."""
    rank = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return ({"sft": 0, "grpo": 1, "kdrl": 2, "rlad": 3}.get(algorithm, 9), -alpha, rank, int(rollout_mode != "sync"))


def run_order(r: "RunResult") -> tuple[int, float, int, int]:
    """:func:`table_order` of a run."""
    return table_order(r.algorithm, r.alpha, r.rollout_mode, r.variant)


@dataclass
class RunResult:
    """One finished run: its spec fields, final evaluation and per-step training metrics."""

    name: str
    label: str
    algorithm: str
    alpha: float
    seed: int
    final_accuracy: float
    eval: dict[str, Any]
    metrics: list[dict[str, float]] = field(default_factory=list)
    rollout_mode: str = "sync"
    """"sync" or "async" (results written before the rollout-mode axis are sync)."""
    train_seconds: float | None = None
    """Wall time of the run's training (``result.json``; None when not recorded)."""
    variant: str = ""
    """The arm's variant ("topk", "gate"; "" for the plain algorithm)."""
    per_prompt: list[dict[str, Any]] = field(default_factory=list)
    """The final evaluation's per-prompt rows (``id``, ``difficulty``, ``n``, ``correct``) from its ``eval.json``."""

    def curve(self, key: str = "reward/accuracy") -> list[float]:
        return [float(m[key]) for m in self.metrics if key in m]


def load_results(task_dir: Path, reeval: str | None = None) -> list[RunResult]:
    """Every finished run under ``task_dir/runs/*`` (those with a ``result.json``). ``reeval``: take the final
    evaluation from ``runs/*/<reeval>/result.json`` instead (a later evaluation with more samples)."""
    out = []
    for done in sorted(Path(task_dir).glob("runs/*/result.json")):
        r = json.loads(done.read_text())
        eval_dir = done.parent / (f"{reeval}/eval" if reeval is not None else "eval")
        if reeval is not None:
            r["eval"] = json.loads((done.parent / reeval / "result.json").read_text())["eval"]
        out.append(RunResult(name=done.parent.name, label=r["label"], algorithm=r["algorithm"], alpha=float(r["alpha"]),
                             seed=int(r["seed"]), final_accuracy=float(r["eval"]["accuracy"]), eval=r["eval"],
                             metrics=read_metrics(done.parent / "train" / "metrics.jsonl"),
                             rollout_mode=str(r.get("rollout_mode", "sync")),
                             train_seconds=r.get("train_seconds"), variant=str(r.get("variant", "")),
                             per_prompt=read_per_prompt(eval_dir)))
    return out


def read_per_prompt(eval_dir: Path) -> list[dict[str, Any]]:
    """The per-prompt rows of the evaluation written in ``eval_dir`` (``eval.json``: the benchmarks' reports; the
    comparison evaluates one); [] when absent."""
    path = Path(eval_dir) / "eval.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    reports = data.get("benchmarks", data) if isinstance(data, dict) else {}
    for report in (reports.values() if isinstance(reports, dict) else reports):
        if isinstance(report, dict) and "per_prompt" in report:
            return list(report["per_prompt"])
    return list(data.get("per_prompt", [])) if isinstance(data, dict) else []


def prompt_cells(test_file: Path, key: Any) -> dict[str, str]:
    """``{id: cell}`` over the records of ``test_file`` (JSON lines), ``key(record)`` naming each record's cell
    (e.g. subset and digits)."""
    rows = [json.loads(line) for line in Path(test_file).read_text().splitlines() if line.strip()]
    return {str(r["id"]): key(r) for r in rows}


def cell_table(results: Sequence[RunResult], cells: dict[str, str],
               reference: dict[str, list[dict[str, Any]]] | None = None) -> str:
    """Mean@k per cell (sum of correct / sum of samples over the cell's prompts), mean over seeds per label; the
    header gives each cell's prompt count. ``reference``: {name: per_prompt rows} (teacher, initial student)."""
    names = sorted(set(cells.values()))
    counts = {c: sum(v == c for v in cells.values()) for c in names}

    def acc(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        got: dict[str, list[int]] = {c: [0, 0] for c in names}
        for row in rows:
            c = cells.get(str(row["id"]))
            if c is not None:
                got[c][0] += int(row["correct"])
                got[c][1] += int(row["n"])
        return {c: k / n for c, (k, n) in got.items() if n}

    lines = ["| run | " + " | ".join(f"{c} ({counts[c]})" for c in names) + " |", "|---|" + "---|" * len(names)]
    for name, rows in (reference or {}).items():
        a = acc(rows)
        lines.append(f"| {name} | " + " | ".join(f"{a[c]:.3f}" if c in a else "-" for c in names) + " |")
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        if r.per_prompt:
            groups[r.label].append(r)
    for label in sorted(groups, key=lambda lab: run_order(groups[lab][0])):
        per_run = [acc(r.per_prompt) for r in groups[label]]
        cells_out = [statistics.fmean(a[c] for a in per_run if c in a) if any(c in a for a in per_run) else None
                     for c in names]
        lines.append(f"| {label} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in cells_out) + " |")
    return "\n".join(lines)


def steps_to_threshold(values: Sequence[float], threshold: float, window: int = 5) -> int | None:
    """First step (1-based) whose trailing ``window``-step mean of ``values`` is >= ``threshold``; None if never.
    Only full windows count (one lucky early batch does not)."""
    for i in range(window - 1, len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        if sum(chunk) / len(chunk) >= threshold:
            return i + 1
    return None


def common_start(results: Sequence[RunResult]) -> float:
    """Mean step-1 rollout accuracy over the runs that sample from the student (all share its initialisation)."""
    firsts = [r.curve()[0] for r in results if r.algorithm != "sft" and r.curve()]
    return statistics.fmean(firsts) if firsts else math.nan


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (math.nan, math.nan)


def summarize(results: Sequence[RunResult], threshold: float) -> list[dict[str, Any]]:
    """One row per label: seeds, final accuracy (mean, std, min, max over seeds), last-5-step training accuracy,
    steps to ``threshold`` (median over the seeds that reached it; ``reached`` counts them).

    For ``sft`` the rollouts come from the teacher, so its training curve is not the student's: no steps-to-threshold.
    """
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.label].append(r)
    rows = []
    for label, runs in groups.items():
        finals = [r.final_accuracy for r in runs]
        mean, std = _mean_std(finals)
        own_rollouts = runs[0].algorithm != "sft"
        last = [statistics.fmean(r.curve()[-5:]) for r in runs if r.curve()]
        hits = [steps_to_threshold(r.curve(), threshold) for r in runs] if own_rollouts else []
        reached = [h for h in hits if h is not None]
        rows.append({
            "label": label, "algorithm": runs[0].algorithm, "alpha": runs[0].alpha,
            "rollout_mode": runs[0].rollout_mode, "variant": runs[0].variant, "seeds": sorted(r.seed for r in runs),
            "train_seconds": statistics.fmean(r.train_seconds for r in runs) if all(
                r.train_seconds is not None for r in runs) else None,
            "final_mean": mean, "final_std": std, "final_min": min(finals), "final_max": max(finals),
            "train_last5": statistics.fmean(last) if last and own_rollouts else None,
            "final_reward": statistics.fmean(float(r.eval.get("mean_reward", math.nan)) for r in runs),
            "final_format": statistics.fmean(float(r.eval.get("format_rate", math.nan)) for r in runs),
            "steps_to_threshold": statistics.median(reached) if reached else None,
            "reached": f"{len(reached)}/{len(runs)}" if own_rollouts else "n/a",
        })
    return sorted(rows, key=lambda row: table_order(row["algorithm"], row["alpha"], row["rollout_mode"],
                                                    row["variant"]))


def format_table(rows: Sequence[dict[str, Any]], threshold: float,
                 reference: dict[str, float | dict[str, float]] | None = None) -> str:
    """A markdown table of :func:`summarize`'s rows (plus teacher / initial student rows from ``reference``: an
    accuracy, or an evaluation dict with ``accuracy``, ``mean_reward``, ``format_rate``). Final reward and format
    are the evaluation's (the task's reward scale: K&K's Logic-RL score runs from -3 to 3)."""
    head = ("| run | seeds | final accuracy mean ± std | min..max | final reward | final format | "
            f"train acc. (last 5 steps) | steps to train acc. ≥ {threshold:g} (median) | reached |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, ref in (reference or {}).items():
        acc, rew, fmt = (ref, math.nan, math.nan) if isinstance(ref, float) else (
            ref["accuracy"], ref.get("mean_reward", math.nan), ref.get("format_rate", math.nan))
        lines.append(f"| {name} | - | {acc:.3f} | - | {rew:.3f} | {fmt:.3f} | - | - | - |")
    for r in rows:
        last = "-" if r["train_last5"] is None else f"{r['train_last5']:.3f}"
        steps = "-" if r["steps_to_threshold"] is None else f"{r['steps_to_threshold']:g}"
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {r['final_mean']:.3f} ± {r['final_std']:.3f} | "
                     f"{r['final_min']:.3f}..{r['final_max']:.3f} | {r['final_reward']:.3f} | {r['final_format']:.3f} | "
                     f"{last} | {steps} | {r['reached']} |")
    return "\n".join(lines)


def paired_differences(results: Sequence[RunResult], baseline: str = "grpo") -> list[dict[str, Any]]:
    """Final accuracy of each label minus the ``baseline`` run of the same seed and rollout mode (same prompts, same
    sampling seeds: the paired difference removes most of the seed-to-seed spread). One row per label with a
    baseline partner: ``{"label", "diffs" (by seed), "mean", "std", "wins"}`` (wins = seeds where the label is
    strictly ahead)."""
    base = {(r.rollout_mode, r.seed): r.final_accuracy for r in results if base_label(r) == baseline}
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        if base_label(r) != baseline and (r.rollout_mode, r.seed) in base:
            groups[r.label].append(r)
    rows = []
    for label, runs in groups.items():
        diffs = {r.seed: r.final_accuracy - base[(r.rollout_mode, r.seed)]
                 for r in sorted(runs, key=lambda r: r.seed)}
        mean, std = _mean_std(list(diffs.values()))
        rows.append({"label": label, "algorithm": runs[0].algorithm, "alpha": runs[0].alpha,
                     "rollout_mode": runs[0].rollout_mode, "variant": runs[0].variant, "diffs": diffs,
                     "mean": mean, "std": std, "wins": sum(d > 0 for d in diffs.values())})
    return sorted(rows, key=lambda row: table_order(row["algorithm"], row["alpha"], row["rollout_mode"],
                                                    row["variant"]))


def base_label(r: RunResult) -> str:
    """The run's label without its rollout-mode suffix (``"grpo (async)"`` -> ``"grpo"``)."""
    suffix = f" ({r.rollout_mode})"
    return r.label[: -len(suffix)] if r.rollout_mode != "sync" and r.label.endswith(suffix) else r.label


def mode_comparison(results: Sequence[RunResult], mode: str = "async") -> list[dict[str, Any]]:
    """``mode`` (async) against sync for every label that ran in both: the final accuracies' mean and std over
    seeds of each, the paired differences (``mode`` run minus the sync run of the same algorithm, alpha and seed:
    same prompts and sampling seeds, only the weights that sampled each batch differ), and the issue's goal,
    ``|mean(mode) - mean(sync)| <= std(sync)`` (``within_one_std``; None with fewer than two sync seeds), and the
    median ``time/step`` of each mode (``sync_step_s``, ``step_s``)."""
    by_key = {(r.algorithm, r.alpha, r.variant, r.rollout_mode, r.seed): r for r in results}
    groups: dict[tuple[str, float, str], dict[str, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r.algorithm, r.alpha, r.variant)][r.rollout_mode].append(r)
    rows = []
    for (algorithm, alpha, variant), modes in groups.items():
        sync, other = modes.get("sync", []), modes.get(mode, [])
        if not sync or not other:
            continue
        sync_mean, sync_std = _mean_std([r.final_accuracy for r in sync])
        other_mean, other_std = _mean_std([r.final_accuracy for r in other])
        diffs = {r.seed: r.final_accuracy - by_key[(algorithm, alpha, variant, "sync", r.seed)].final_accuracy
                 for r in sorted(other, key=lambda r: r.seed) if (algorithm, alpha, variant, "sync", r.seed) in by_key}
        d_mean, d_std = _mean_std(list(diffs.values()))
        gap = other_mean - sync_mean
        step_s = {m: [float(x["time/step"]) for r in runs for x in r.metrics if "time/step" in x]
                  for m, runs in (("sync", sync), (mode, other))}
        rows.append({"label": base_label(other[0]), "algorithm": algorithm, "alpha": alpha, "variant": variant,
                     "mode": mode,
                     "sync_step_s": statistics.median(step_s["sync"]) if step_s["sync"] else math.nan,
                     "step_s": statistics.median(step_s[mode]) if step_s[mode] else math.nan,
                     "sync_seeds": len(sync), "seeds": len(other),
                     "sync_mean": sync_mean, "sync_std": sync_std, "mean": other_mean, "std": other_std,
                     "gap": gap, "diffs": diffs, "diff_mean": d_mean, "diff_std": d_std,
                     "ahead": sum(d > 0 for d in diffs.values()),
                     "within_one_std": None if len(sync) < 2 else bool(abs(gap) <= sync_std)})
    return sorted(rows, key=lambda row: table_order(row["algorithm"], row["alpha"], "sync", row["variant"]))


def format_mode_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`mode_comparison`'s rows."""
    lines = ["| run | sync: final mean ± std | async: final mean ± std | async − sync (means) | "
             "paired async − sync (same seed), mean ± std | by seed | seeds ahead | within one sync std | "
             "step s, sync / async (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by_seed = ", ".join(f"s{seed}: {d:+.3f}" for seed, d in r["diffs"].items())
        verdict = {None: "n/a (one sync seed)", True: "**yes**",
                   False: "**no** (async " + ("higher)" if r["gap"] > 0 else "lower)")}[r["within_one_std"]]
        lines.append(f"| {r['label']} | {r['sync_mean']:.3f} ± {r['sync_std']:.3f} ({r['sync_seeds']}) | "
                     f"{r['mean']:.3f} ± {r['std']:.3f} ({r['seeds']}) | {r['gap']:+.3f} | "
                     f"{r['diff_mean']:+.3f} ± {r['diff_std']:.3f} | {by_seed} | {r['ahead']}/{len(r['diffs'])} | "
                     f"{verdict} | {r['sync_step_s']:.2f} / {r['step_s']:.2f} |")
    return "\n".join(lines)


def staleness_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per asynchronous run, from its ``metrics.jsonl``: steps, the mean of ``rollout/staleness`` (one-step
    off-policy: (steps - 1) / steps, the first batch is generated by the current weights), the steps trained on a
    batch one version old, the sum of ``rollout/stale_dropped``, and the training wall time."""
    rows = []
    for r in sorted(results, key=lambda r: (run_order(r), r.seed)):
        if r.rollout_mode == "sync":
            continue
        stale = [float(m["rollout/staleness"]) for m in r.metrics if "rollout/staleness" in m]
        dropped = [float(m["rollout/stale_dropped"]) for m in r.metrics if "rollout/stale_dropped" in m]
        rows.append({"name": r.name, "label": r.label, "steps": len(r.metrics),
                     "staleness_mean": statistics.fmean(stale) if stale else math.nan,
                     "stale_steps": sum(x >= 1 for x in stale), "logged": len(stale),
                     "stale_dropped": sum(dropped) if dropped else math.nan, "train_seconds": r.train_seconds})
    return rows


def format_staleness(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| run | steps | mean rollout/staleness | steps on a batch 1 version old | sum rollout/stale_dropped | "
             "train s |", "|---|---|---|---|---|---|"]
    for r in rows:
        secs = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['name']} | {r['steps']} | {r['staleness_mean']:.3f} | {r['stale_steps']}/{r['logged']} | "
                     f"{r['stale_dropped']:g} | {secs} |")
    return "\n".join(lines)


def format_paired(rows: Sequence[dict[str, Any]], baseline: str = "grpo") -> str:
    lines = [f"| run | final accuracy − {baseline} (same seed), mean ± std | by seed | seeds ahead |", "|---|---|---|---|"]
    for r in rows:
        by_seed = ", ".join(f"s{seed}: {d:+.3f}" for seed, d in r["diffs"].items())
        lines.append(f"| {r['label']} | {r['mean']:+.3f} ± {r['std']:.3f} | {by_seed} | {r['wins']}/{len(r['diffs'])} |")
    return "\n".join(lines)


def difficulty_table(results: Sequence[RunResult], reference: dict[str, dict[str, Any]] | None = None) -> str:
    """Final accuracy by difficulty (the evaluation's ``by_difficulty``), mean over seeds per label."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.label].append(r)
    levels = sorted({k for r in results for k in r.eval.get("by_difficulty", {})}
                    | {k for ev in (reference or {}).values() for k in ev.get("by_difficulty", {})})
    lines = ["| run | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for name, ev in (reference or {}).items():
        lines.append(f"| {name} | " + " | ".join(f"{ev.get('by_difficulty', {}).get(k, math.nan):.3f}"
                                                  for k in levels) + " |")
    for label in sorted(groups, key=lambda lab: run_order(groups[lab][0])):
        cells = []
        for k in levels:
            xs = [float(r.eval["by_difficulty"][k]) for r in groups[label] if k in r.eval.get("by_difficulty", {})]
            cells.append(f"{statistics.fmean(xs):.3f}" if xs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: (column, metric key, format) of :func:`activity_table`: how much each loss's clip / teacher terms act. A key may
#: list alternatives ``a|b`` (the first one a step logged).
ACTIVITY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ratio min..max", "", ""),
    ("clip low", "loss/clip/low_frac", "{:.2%}"),
    ("clip high", "loss/clip/high_frac", "{:.2%}"),
    ("teacher clamp active", "loss/teacher/clamp_frac|teacher/clamp_frac", "{:.1%}"),
    ("KL(student‖teacher)/token (k3)", "loss/kl/teacher_k3", "{:.3f}"),
    ("top-k KL/token", "loss/topk/kl", "{:.3f}"),
    ("responses gated (trust)", "loss/trust/gated_frac", "{:.1%}"),
    ("grad norm", "optim/grad_norm", "{:.2f}"),
    ("uniform groups", "groups/uniform_fraction", "{:.0%}"),
)


def activity_table(results: Sequence[RunResult]) -> str:
    """Per label, the mean over all steps and seeds of the loss's own diagnostics: the ratio's range, the fraction of
    tokens clipped low/high, where TRRD's teacher clamp is active, the per-token KL to the teacher (rlad, kdrl), the
    gradient norm and the fraction of uniform (skipped) groups. ``-`` where a run does not log the metric."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        if r.algorithm != "sft":
            groups[r.label].append(r)
    lines = ["| run | " + " | ".join(c for c, _, _ in ACTIVITY_COLUMNS) + " |", "|---|" + "---|" * len(ACTIVITY_COLUMNS)]
    for label in sorted(groups, key=lambda lab: run_order(groups[lab][0])):
        rows = [m for r in groups[label] for m in r.metrics]
        cells = []
        for _, key, fmt in ACTIVITY_COLUMNS:
            if not key:
                lo = [m["loss/ratio/min"] for m in rows if "loss/ratio/min" in m]
                hi = [m["loss/ratio/max"] for m in rows if "loss/ratio/max" in m]
                cells.append(f"{statistics.fmean(lo):.2f}..{statistics.fmean(hi):.2f}" if lo and hi else "-")
                continue
            xs = [float(m[k]) for m in rows for k in next(([k] for k in key.split("|") if k in m), [])
                  if m[k] is not None and not math.isnan(float(m[k]))]  # None: not measured that step
            cells.append(fmt.format(statistics.fmean(xs)) if xs else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_metrics(a: Sequence[dict[str, float]], b: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Per-step comparison of two runs' metrics over the keys both logged (wall-clock and memory keys excluded).

    Returns ``{"steps", "keys", "max_abs_diff", "worst_key", "identical"}``; ``identical`` means every compared
    value is bit-for-bit equal on every step both runs have.
    """
    steps = min(len(a), len(b))
    worst, worst_key, keys = 0.0, None, set()
    for ra, rb in zip(a[:steps], b[:steps]):
        for k in sorted(set(ra) & set(rb)):
            if k == "step" or is_clock_metric(k) or k.endswith(_NOT_COMPARED_SUFFIXES):
                continue
            keys.add(k)
            diff = abs(float(ra[k]) - float(rb[k]))
            if diff > worst or (math.isnan(diff) and worst_key is None):
                worst, worst_key = diff, k
    return {"steps": steps, "keys": len(keys), "max_abs_diff": worst, "worst_key": worst_key,
            "identical": steps > 0 and worst == 0.0}


def alpha_one_check(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """For each seed (and rollout mode) with both a ``grpo`` and an ``rlad`` alpha=1.0 run: :func:`compare_metrics`
    of the two."""
    by = {(r.algorithm, r.alpha, r.rollout_mode, r.seed): r for r in results if not r.variant}
    out = []
    for (algorithm, alpha, mode, seed), r in sorted(by.items()):
        if algorithm == "rlad" and alpha == 1.0 and ("grpo", 1.0, mode, seed) in by:
            g = by[("grpo", 1.0, mode, seed)]
            out.append({"seed": seed, **({} if mode == "sync" else {"rollout_mode": mode}),
                        **compare_metrics(g.metrics, r.metrics),
                        "final_accuracy": (g.final_accuracy, r.final_accuracy)})
    return out


def _trailing_mean(values: Sequence[float], window: int) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def plot_learning_curves(results: Sequence[RunResult], png: Path, title: str, *, sweep: bool = False,
                         key: str = "reward/accuracy", reference: dict[str, float] | None = None,
                         smooth: int = 5) -> Path:
    """Mean over seeds (line) and min..max band of ``key`` per step, one colour per label. ``sweep=True`` draws
    only rlad runs (one line per alpha) and grpo for reference; otherwise sft/grpo/kdrl and rlad at its main alpha
    (the labels of the main comparison: every label with the most seeds). ``reference``: {name: accuracy} drawn
    as dashed lines on the final-accuracy panel (teacher, initial student). An asynchronous run's curve is dashed
    and its bar hatched, in the colour of its synchronous twin."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.label].append(r)
    if sweep:
        labels = [lab for lab in groups if groups[lab][0].algorithm in ("rlad", "grpo")]
        labels.sort(key=lambda lab: (groups[lab][0].alpha if groups[lab][0].algorithm == "rlad" else -1,
                                     groups[lab][0].rollout_mode != "sync"))
    else:
        most = max((len(v) for v in groups.values()), default=0)
        labels = sorted((lab for lab in groups if len(groups[lab]) == most),
                        key=lambda lab: table_order(groups[lab][0].algorithm, 0.0, groups[lab][0].rollout_mode,
                                                    groups[lab][0].variant))
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(12, 4.2))
    cmap = plt.get_cmap("viridis" if sweep else "tab10")
    # One colour per algorithm (and alpha); an asynchronous run is drawn dashed in its synchronous twin's colour.
    bases = list(dict.fromkeys(base_label(groups[lab][0]) for lab in labels))
    for i, label in enumerate(labels):
        curves = [_trailing_mean(r.curve(key), smooth) for r in groups[label] if r.curve(key)]
        j = bases.index(base_label(groups[label][0]))
        color = cmap(j / max(1, len(bases) - 1)) if sweep else cmap(j)
        style = "-" if groups[label][0].rollout_mode == "sync" else "--"
        if curves and groups[label][0].algorithm != "sft":
            n = min(len(c) for c in curves)
            steps = list(range(1, n + 1))
            cols = list(zip(*[c[:n] for c in curves]))
            ax_curve.plot(steps, [statistics.fmean(c) for c in cols], color=color, label=label, linewidth=1.8,
                          linestyle=style)
            ax_curve.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=color, alpha=0.15)
        finals = [r.final_accuracy for r in groups[label]]
        ax_bar.bar(i, statistics.fmean(finals), color=color, alpha=0.8 if style == "-" else 0.45,
                   hatch=None if style == "-" else "//")
        ax_bar.scatter([i] * len(finals), finals, color="black", s=10, zorder=3)
    # Zoom on the runs and the initial student: differences of ~0.01 vanish on a 0..1 axis. A reference far above
    # (a near-perfect teacher) is named in the legend but drawn only when it falls inside the zoomed range.
    finals_all = [r.final_accuracy for lab in labels for r in groups[lab]]
    near = finals_all + [acc for name, acc in (reference or {}).items() if "teacher" not in name]
    if near:
        span = max(near) - min(near)
        lo, hi = max(0.0, min(near) - 0.3 * span - 0.01), min(1.0, max(near) + 0.3 * span + 0.01)
        for name, acc in (reference or {}).items():
            if "teacher" in name and acc <= hi + 0.5 * (hi - lo):
                hi = min(1.0, max(hi, acc + 0.01))
        ax_bar.set_ylim(lo, hi)
    for j, (name, acc) in enumerate((reference or {}).items()):
        ax_bar.axhline(acc, color="gray", linestyle="--" if j else ":", linewidth=1.2,
                       label=f"{name} {acc:.3f}" + ("" if not near or acc <= ax_bar.get_ylim()[1] else " (off scale)"))
    if reference:
        ax_bar.legend(fontsize=8, loc="lower right")
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel(f"{key} (student rollouts, T=1)")
    ax_curve.set_title(f"training curves ({smooth}-step trailing mean): mean over seeds, band = min..max")
    ax_curve.grid(True, alpha=0.3)
    ax_curve.legend(fontsize=8)
    ax_bar.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax_bar.set_ylabel("final accuracy (vLLM eval, test split)")
    ax_bar.set_title("final accuracy: mean (bar), seeds (dots); zoomed")
    ax_bar.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def plot_by_difficulty(results: Sequence[RunResult], png: Path, title: str,
                       reference: dict[str, dict[str, Any]] | None = None) -> Path:
    """Final accuracy per difficulty level (the evaluation's ``by_difficulty``, e.g. carry_trap's ``carry`` /
    ``plain``): one group of bars per level, one bar per label (mean over seeds, dots = seeds), the reference
    models (teacher, initial student) as short horizontal ticks over their level."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.label].append(r)
    labels = sorted(groups, key=lambda lab: run_order(groups[lab][0]))
    levels = sorted({k for r in results for k in r.eval.get("by_difficulty", {})})
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        for j, level in enumerate(levels):
            xs = [float(r.eval["by_difficulty"][level]) for r in groups[label] if level in r.eval.get("by_difficulty", {})]
            if not xs:
                continue
            x = j + (i - (len(labels) - 1) / 2) * width
            ax.bar(x, statistics.fmean(xs), width * 0.9, color=cmap(i % 10), label=label if j == 0 else None)
            ax.scatter([x] * len(xs), xs, color="black", s=8, zorder=3)
    styles = (":", "--", "-.")
    for k, (name, ev) in enumerate((reference or {}).items()):
        for j, level in enumerate(levels):
            if level in ev.get("by_difficulty", {}):
                ax.hlines(ev["by_difficulty"][level], j - 0.45, j + 0.45, colors="gray", linestyles=styles[k % 3],
                          label=name if j == 0 else None)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_ylabel("final accuracy (Mean@k, test split)")
    ax.set_ylim(0, 1.05)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
