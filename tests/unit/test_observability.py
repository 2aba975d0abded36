"""MetricsLogger (JSONL, TensorBoard, progress bar, resume truncation) and the curves plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlad_megatron.trainer.observability.logger import (
    MetricsLogger,
    format_eval_line,
    format_postfix,
    read_metrics,
    truncate_metrics,
)
from rlad_megatron.trainer.observability.plots import plot_curves, read_series


def _metrics(step: int) -> dict[str, float]:
    return {"reward/mean": 0.1 * step, "reward/accuracy": 0.05 * step, "loss/policy": 1.0 / step,
            "time/step": 0.5}


def _tb_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_jsonl_rows_and_tensorboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logger = MetricsLogger(tmp_path, total_steps=5)
    for step in (1, 2, 3):
        logger.log(step, _metrics(step))
    logger.log(4, {"reward/mean": float("nan"), "eval/accuracy": 0.75})
    logger.note("hello from the trainer")
    png = logger.close()

    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1] == {"step": 2, **_metrics(2)}
    assert rows[3] == {"step": 4, "reward/mean": None, "eval/accuracy": 0.75}  # NaN is written as null
    # Every line is strict JSON (no bare NaN).
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    acc = _tb_scalars(tmp_path / "tb", "reward/accuracy")
    assert [s for s, _ in acc] == [1, 2, 3] and [v for _, v in acc] == pytest.approx([0.05, 0.1, 0.15])
    nan_events = _tb_scalars(tmp_path / "tb", "reward/mean")
    assert [s for s, _ in nan_events] == [1, 2, 3, 4] and math.isnan(nan_events[-1][1])
    assert _tb_scalars(tmp_path / "tb", "eval/accuracy") == [(4, 0.75)]

    assert png == tmp_path / "curves.png" and png.exists()
    width, height = _png_size(png)
    assert width > 300 and height > 200
    err = capsys.readouterr().err
    assert "hello from the trainer" in err
    assert "4/5" in err and "reward=" in err  # the bar advanced to step 4 and shows the postfix


def test_resume_drops_steps_after_checkpoint(tmp_path: Path) -> None:
    crashed = MetricsLogger(tmp_path, total_steps=10)
    for step in range(1, 7):
        crashed.log(step, _metrics(step))
    crashed._writer.flush()  # the crash: no close(); the file has steps 1..6, the checkpoint is at step 4
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "reward/me')  # a torn last line

    resumed = MetricsLogger(tmp_path, total_steps=10, start_step=4)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    for step in range(5, 11):
        resumed.log(step, _metrics(step))
    resumed.close()

    uninterrupted = tmp_path / "ref"
    ref = MetricsLogger(uninterrupted, total_steps=10)
    for step in range(1, 11):
        ref.log(step, _metrics(step))
    ref.close()
    assert (tmp_path / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()
    # TensorBoard hides the crashed run's steps 5..6 (purge), so each step appears once.
    steps = [s for s, _ in _tb_scalars(tmp_path / "tb", "reward/mean")]
    assert steps == list(range(1, 11))


def test_fresh_run_starts_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "reward/mean": 9.0}\n')
    logger = MetricsLogger(tmp_path, total_steps=2)
    logger.log(1, {"reward/mean": 0.5})
    logger.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "reward/mean": 0.5}]


def test_truncate_metrics_counts_dropped(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)) + "garbage\n")
    assert truncate_metrics(path, 2) == 4
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0


def test_disabled_logger_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rank1"
    logger = MetricsLogger(out, total_steps=3, start_step=1, enabled=False)
    logger.log(2, _metrics(2))
    logger.note("should not print")
    assert logger.close() is None
    assert not out.exists()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_bad_metric_values_are_named(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, total_steps=1)
    with pytest.raises(TypeError, match="reward/mean"):
        logger.log(1, {"reward/mean": "high"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        logger.log(1, {"step": 3.0})
    logger.close()
    with pytest.raises(RuntimeError, match="after close"):
        logger.log(2, {"reward/mean": 1.0})


def test_postfix_shows_reward_accuracy_loss() -> None:
    text = format_postfix({"reward/mean": 0.4123, "reward/accuracy": 0.375, "loss/kl": 2.0, "loss/policy": 0.01,
                           "time/step": 3.21})
    assert text == "reward=0.412 acc=0.375 loss=0.01 t=3.2s"
    assert format_postfix({"time/generation": 1.0}) == ""


def test_plot_curves_with_eval_points_and_missing_keys(tmp_path: Path) -> None:
    jsonl = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "reward/mean": s / 40, "reward/accuracy": s / 50} for s in range(1, 41)]
    for s in (10, 20, 30, 40):
        rows[s - 1]["eval/accuracy"] = s / 45
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = read_series(jsonl, ("reward/mean", "eval/accuracy", "absent"))
    assert series["eval/accuracy"][0] == [10, 20, 30, 40] and "absent" not in series
    png = plot_curves(jsonl, tmp_path / "out" / "curves.png")
    assert _png_size(png)[0] >= 500  # one panel (reward and accuracy): the only keys logged

    empty = plot_curves(tmp_path / "none.jsonl", tmp_path / "empty.png")
    assert empty.exists()  # a run always leaves an image, saying what is missing


def test_eval_line_accuracy_first() -> None:
    line = format_eval_line(20, {"reward/mean": 0.3, "eval/pass@4": 0.625, "eval/accuracy": 0.4125,
                                 "eval/accuracy/d1": 0.9})
    assert line == "step 20: eval accuracy=0.4125 accuracy/d1=0.9 pass@4=0.625"
    assert format_eval_line(3, {"reward/mean": 0.3}) is None
