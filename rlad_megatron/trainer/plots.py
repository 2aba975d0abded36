"""Reward and accuracy curves from a run's ``metrics.jsonl``, drawn with matplotlib's Agg backend (no display).

    plot_curves(Path("runs/rlad/metrics.jsonl"), Path("runs/rlad/curves.png"))

Keys whose name contains ``accuracy`` share a panel with a 0..1 axis; the other keys (rewards) get their own panel.
Keys logged at every step are drawn as a thin raw line plus a moving average; sparse keys (``eval/...``, logged
every N steps) are drawn as points joined by a line.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

DEFAULT_KEYS: tuple[str, ...] = ("reward/mean", "reward/accuracy", "eval/accuracy")


def read_series(metrics_jsonl: Path, keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` for the keys present in the file (non-finite and null values skipped).

    Malformed lines (e.g. a half-written last line after a crash) are skipped.
    """
    series: dict[str, tuple[list[int], list[float]]] = {k: ([], []) for k in keys}
    if not Path(metrics_jsonl).exists():
        return {}
    with open(metrics_jsonl, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                continue
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


def _draw(ax, key: str, steps: list[int], values: list[float], color: str, sparse: bool) -> None:
    if sparse or len(steps) < 8:
        ax.plot(steps, values, marker="o", markersize=4, linewidth=1.2, color=color, label=key)
        return
    window = max(2, len(steps) // 20)
    ax.plot(steps, values, linewidth=0.8, alpha=0.35, color=color)
    ax.plot(steps, _moving_average(values, window), linewidth=1.8, color=color, label=f"{key} (avg {window})")


def plot_curves(metrics_jsonl: Path, png: Path, keys: Sequence[str] = DEFAULT_KEYS) -> Path:
    """Draw ``keys`` against step from ``metrics_jsonl`` and save the figure as ``png``; returns ``png``.

    A key missing from the file is left out; when none is present the figure says so (the file is still written,
    so that a run always leaves a curves image behind).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    series = read_series(Path(metrics_jsonl), keys)
    accuracy = [k for k in keys if k in series and "accuracy" in k]
    other = [k for k in keys if k in series and "accuracy" not in k]
    panels = [p for p in (other, accuracy) if p] or [[]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.0), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {k: colors[i % len(colors)] for i, k in enumerate(keys)}
    max_step = max((max(s) for s, _ in series.values()), default=0)
    for ax, panel in zip(axes[0], panels):
        if not panel:
            ax.text(0.5, 0.5, f"no {', '.join(keys)} in\n{Path(metrics_jsonl).name}", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for key in panel:
            steps, values = series[key]
            # A key logged on far fewer steps than the run has (periodic eval) is drawn as points.
            sparse = key.startswith("eval/") or len(steps) < 0.5 * max(1, max_step)
            _draw(ax, key, steps, values, color_of[key], sparse)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        if panel is accuracy:
            ax.set_ylim(-0.02, 1.02)
            ax.set_title("accuracy")
        else:
            ax.set_title("reward")
    fig.suptitle(str(Path(metrics_jsonl).parent.name or "run"), fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
