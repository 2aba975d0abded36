"""The curves of a run from its ``metrics.jsonl``, drawn with matplotlib's Agg backend (no display).

    plot_curves(Path("runs/rlad/metrics.jsonl"), Path("runs/rlad/curves.png"))

One panel per question a user asks of a run (:data:`PANELS`): is the reward (and the held-out accuracy) rising, how
long are the responses, how far is the student from the teacher, how often do the clips act, and where does a step's
time go (stacked: generation, teacher scoring, old log-probs, training, weight sync, the rest; over it, dashed, the
seconds each pool computed: the learner, the rollout engines, the teacher, so that the gap up to the top of the stack
is that pool's waiting time, trainer/step/timeline.py), and does the engine serve what the learner computes (the
log-prob gap checked after weight syncs). A panel none of whose keys the run logged (e.g. KL to the teacher in a GRPO
run) is left out.

Keys logged at every step are drawn as a thin raw line plus a moving average; sparse keys (``eval/...``, logged
every N steps) as points joined by a line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlad_megatron.atomic_write import atomic_file
from rlad_megatron.trainer.observability.metrics_file import read_metrics


@dataclass(frozen=True)
class Panel:
    title: str
    keys: tuple[str, ...]
    """Metric keys drawn in this panel, in legend order (those the run did not log are skipped)."""
    stacked: bool = False
    """Draw the keys as stacked areas (parts of a whole, e.g. the step time), at the steps that logged them."""
    lines: tuple[str, ...] = ()
    """Keys drawn as dashed lines over the stacked areas (e.g. each pool's busy seconds over the step time)."""


PANELS: tuple[Panel, ...] = (
    Panel("reward and accuracy", ("reward/mean", "reward/accuracy", "eval/accuracy")),
    Panel("response length (tokens)", ("response/length_mean", "response/length_max")),
    Panel("KL to the teacher", ("loss/kl/teacher_k3", "loss/kd/kl")),
    Panel("clip fractions", ("loss/clip/low_frac", "loss/clip/high_frac", "loss/clip/dual_frac",
                             "loss/teacher/clamp_frac")),
    Panel("step time (s)", ("time/generation", "time/teacher", "time/old_logprobs", "time/train", "time/sync",
                            "time/other"), stacked=True,
          lines=("timeline/learner_busy", "timeline/rollout_busy", "timeline/teacher_busy")),
    Panel("engine vs learner log-prob gap", ("sync/logprob_max_abs", "sync/logprob_mean_abs")),
)

#: Colours of the pools' busy lines (learner, rollout, teacher) over the step-time stack.
POOL_COLORS = ("black", "tab:red", "tab:olive")

#: The keys of the first panel (kept for callers that only want the reward curves).
DEFAULT_KEYS: tuple[str, ...] = PANELS[0].keys


def read_series(metrics_jsonl: Path, keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for the keys present in the file (non-finite and null values skipped).

    Malformed lines (e.g. a half-written last line after a crash) are skipped.
    """
    series: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in keys}
    for row in read_metrics(metrics_jsonl):
        for key in keys:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                series[key][0].append(row["step"])
                series[key][1].append(float(value))
    return {k: v for k, v in series.items() if v[0]}


def _moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _draw(ax: Any, key: str, steps: list[int], values: list[float], color: str, sparse: bool) -> None:
    if sparse or len(steps) < 8:
        ax.plot(steps, values, marker="o", markersize=4, linewidth=1.2, color=color, label=key)
        return
    window = max(2, len(steps) // 20)
    ax.plot(steps, values, linewidth=0.8, alpha=0.35, color=color)
    ax.plot(steps, _moving_average(values, window), linewidth=1.8, color=color, label=f"{key} (avg {window})")


def stacked_rows(series: dict[str, tuple[list[int], list[float]]], keys: Sequence[str]) -> tuple[list[int],
                                                                                                 list[list[float]]]:
    """The steps at which every present key of ``keys`` was logged, and one row of values per present key."""
    present = [k for k in keys if k in series]
    if not present:
        return [], []
    by_key = {k: dict(zip(*series[k])) for k in present}
    steps = sorted(set.intersection(*(set(v) for v in by_key.values())))
    return steps, [[by_key[k][s] for s in steps] for k in present]


def build_figure(metrics_jsonl: Path, panels: Sequence[Panel] = PANELS) -> Any:
    """The matplotlib figure of :func:`plot_curves` (one axis per panel with data, titled like the panel)."""
    import matplotlib  # lazy: matplotlib only when drawing

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: matplotlib only when drawing

    all_keys = [k for p in panels for k in p.keys + p.lines]
    series = read_series(Path(metrics_jsonl), all_keys)
    shown = [p for p in panels if any(k in series for k in p.keys)]
    cols = min(3, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(shown):]:
        ax.set_axis_off()
    if not shown:
        flat[0].text(0.5, 0.5, f"no metrics to plot in\n{Path(metrics_jsonl).name}", ha="center", va="center",
                     transform=flat[0].transAxes)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    max_step = max((max(s) for s, _ in series.values()), default=0)
    for ax, panel in zip(flat, shown):
        if panel.stacked:
            steps, values = stacked_rows(series, panel.keys)
            labels = [k for k in panel.keys if k in series]
            title = panel.title
            if len(steps) >= 8:  # per-step times are noisy: stack their moving averages
                window = max(2, len(steps) // 20)
                values = [_moving_average(v, window) for v in values]
                title = f"{panel.title}, avg {window}"
            ax.stackplot(steps, values, labels=labels, colors=colors[:len(labels)], alpha=0.8)
            for i, key in enumerate(k for k in panel.lines if k in series):  # each pool's busy seconds
                line_steps, line_values = series[key]
                if len(line_steps) >= 8:
                    line_values = _moving_average(line_values, max(2, len(line_steps) // 20))
                ax.plot(line_steps, line_values, linestyle="--", linewidth=1.6, color=POOL_COLORS[i % 3],
                        label=key.replace("timeline/", "") + " (pool busy)")
        else:
            for i, key in enumerate(k for k in panel.keys if k in series):
                steps, values = series[key]
                # A key logged on far fewer steps than the run has (periodic eval) is drawn as points.
                sparse = key.startswith("eval/") or len(steps) < 0.5 * max(1, max_step)
                _draw(ax, key, steps, values, colors[i % len(colors)], sparse)
        ax.set_title(title if panel.stacked else panel.title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    fig.suptitle(str(Path(metrics_jsonl).parent.name or "run"), fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(metrics_jsonl: Path, png: Path, panels: Sequence[Panel] = PANELS) -> Path:
    """Draw ``panels`` from ``metrics_jsonl`` and save the figure as ``png``; returns ``png``.

    When the file holds none of the keys the figure says so (the file is still written, so that a run always
    leaves a curves image behind).
    """
    import matplotlib.pyplot as plt  # lazy: matplotlib only when drawing

    fig = build_figure(metrics_jsonl, panels)

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(png, "wb", what="the curves image") as f:  # never a half-drawn image at ``png``
            fig.savefig(f, dpi=100, format="png")
    finally:
        plt.close(fig)
    return png
