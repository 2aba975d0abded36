"""The curves PNG: one panel per question (reward/accuracy, response length, KL to the teacher, clip fractions,
stacked step time, engine/learner gap), drawn from a metrics.jsonl written here, with the values written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlad_megatron.trainer.observability.plots import PANELS, build_figure, plot_curves, stacked_rows, read_series

TIME_KEYS = ("time/generation", "time/teacher", "time/old_logprobs", "time/train", "time/sync", "time/other")


def _row(step: int) -> dict:
    times = {"time/generation": 1.0 + 0.1 * step, "time/teacher": 0.5, "time/old_logprobs": 0.0,
             "time/train": 0.25 * step, "time/sync": 0.05, "time/other": 0.01}
    return {"step": step, "reward/mean": 0.1 * step, "reward/accuracy": 0.05 * step,
            "response/length_mean": 20.0 + step, "response/length_max": 40.0 + step,
            "loss/kl/teacher_k3": 1.0 / step, "loss/clip/low_frac": 0.01 * step, "loss/clip/high_frac": 0.02,
            "loss/clip/dual_frac": 0.0, "loss/teacher/clamp_frac": 0.05, **times,
            "time/step": sum(times.values()), "sync/logprob_max_abs": 1e-6, "sync/logprob_mean_abs": 2e-7}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_every_panel_draws_the_logged_values(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [_row(s) for s in range(1, 7)]  # < 8 steps: raw values, no moving average
    rows[3]["eval/accuracy"] = 0.6
    jsonl = _write(tmp_path / "metrics.jsonl", rows)
    fig = build_figure(jsonl)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [p.title for p in PANELS]
    by_title = {ax.get_title(): ax for ax in axes}
    steps = list(range(1, 7))

    reward = _lines(by_title["reward and accuracy"])
    assert reward["reward/mean"] == (steps, pytest.approx([0.1 * s for s in steps]))
    assert reward["eval/accuracy"] == ([4], [0.6])
    length = _lines(by_title["response length (tokens)"])
    assert length["response/length_max"] == (steps, [40.0 + s for s in steps])
    assert _lines(by_title["KL to the teacher"])["loss/kl/teacher_k3"][1] == pytest.approx([1 / s for s in steps])
    clips = _lines(by_title["clip fractions"])
    assert set(clips) == {"loss/clip/low_frac", "loss/clip/high_frac", "loss/clip/dual_frac",
                          "loss/teacher/clamp_frac"}
    assert clips["loss/clip/low_frac"][1] == pytest.approx([0.01 * s for s in steps])

    # The stacked areas: one per part, and the top of the stack is the whole step time.
    time_ax = by_title["step time (s)"]
    assert [c.get_label() for c in time_ax.collections] == list(TIME_KEYS)
    top = time_ax.collections[-1].get_paths()[0].vertices
    for step in steps:
        assert top[top[:, 0] == step][:, 1].max() == pytest.approx(rows[step - 1]["time/step"])
    plt.close(fig)

    png = plot_curves(jsonl, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_panels_without_data_are_left_out_and_long_runs_are_smoothed(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [_row(s) for s in range(1, 41)]
    for row in rows:  # a GRPO run: no teacher
        del row["loss/kl/teacher_k3"], row["loss/teacher/clamp_frac"]
    fig = build_figure(_write(tmp_path / "metrics.jsonl", rows))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "KL to the teacher" not in titles and titles[0] == "reward and accuracy"
    assert "step time (s), avg 2" in titles
    reward = _lines(next(ax for ax in fig.axes if ax.get_title() == "reward and accuracy"))
    assert "reward/mean (avg 2)" in reward  # 40 steps: raw line plus a moving average
    _, smoothed = reward["reward/mean (avg 2)"]
    assert smoothed[5] == pytest.approx((0.5 + 0.6) / 2)
    plt.close(fig)


def test_stacked_rows_use_steps_where_every_part_was_logged() -> None:
    series = {"a": ([1, 2, 3], [1.0, 2.0, 3.0]), "b": ([2, 3], [10.0, 20.0])}
    assert stacked_rows(series, ("a", "b", "absent")) == ([2, 3], [[2.0, 3.0], [10.0, 20.0]])
    assert stacked_rows(series, ("absent",)) == ([], [])


def test_no_metrics_still_leaves_an_image(tmp_path: Path) -> None:
    assert read_series(tmp_path / "none.jsonl", ("reward/mean",)) == {}
    png = plot_curves(tmp_path / "none.jsonl", tmp_path / "empty.png")
    assert png.exists() and png.stat().st_size > 1000
