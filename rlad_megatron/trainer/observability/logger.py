"""What a run shows and leaves behind: per-step metrics as JSONL and TensorBoard scalars, a progress bar, curves.

    logger = MetricsLogger(Path(cfg.output_dir), total_steps=cfg.steps, start_step=resumed_step,
                           enabled=torch.distributed.get_rank() == 0)
    for step in range(resumed_step + 1, cfg.steps + 1):
        ...
        logger.log(step, {"reward/mean": 0.4, "reward/accuracy": 0.4, "loss/policy": 0.01, "time/step": 3.2})
    logger.note("saved checkpoint step 20")
    logger.close()                                        # flushes, writes output_dir/curves.png

Files under ``output_dir``: ``metrics.jsonl`` (one ``{"step": s, key: value, ...}`` object per line; non-finite
values are written as ``null``), ``tb/`` (TensorBoard event files), ``curves.png``, and with W&B enabled
``wandb/`` and ``wandb_run_id`` (``rlad_megatron.trainer.observability.wandb_log``).

Resume: steps are numbered from 1, and ``start_step`` is the last step the run completed (its checkpoint). A crashed
run may have logged steps after its last checkpoint; those JSONL lines (step > ``start_step``) are dropped and the
TensorBoard writer purges them (``purge_step``), so both read as if the run had never stopped. A fresh run
(``start_step == 0``) starts a new JSONL file.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from rlad_megatron.atomic_write import disk_full_guard
from rlad_megatron.config import WandbConfig
from rlad_megatron.console import console_stream
from rlad_megatron.trainer.observability.metrics_file import METRICS_FILE, read_metrics, truncate_metrics  # noqa: F401
from rlad_megatron.trainer.observability.plots import PANELS, Panel, plot_curves
from rlad_megatron.trainer.observability.wandb_log import WandbRun

TB_DIR = "tb"
CURVES_FILE = "curves.png"

#: Progress-bar postfix: (metric key, short label); the first present ``loss/`` key of LOSS_KEYS is shown as loss.
_POSTFIX_KEYS: tuple[tuple[str, str], ...] = (("reward/mean", "reward"), ("reward/accuracy", "acc"))
LOSS_KEYS: tuple[str, ...] = ("loss/total", "loss/loss", "loss/policy", "loss/pg_loss")


def _json_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _loss_key(metrics: Mapping[str, float]) -> str | None:
    for key in LOSS_KEYS:
        if key in metrics:
            return key
    return next((k for k in metrics if k.startswith("loss/")), None)


def format_postfix(metrics: Mapping[str, float]) -> str:
    """The short progress-bar postfix: ``reward=0.41 acc=0.38 loss=0.0123 t=3.2s`` (only the keys present)."""
    parts = [f"{label}={metrics[key]:.3g}" for key, label in _POSTFIX_KEYS if key in metrics]
    loss_key = _loss_key(metrics)
    if loss_key is not None:
        parts.append(f"loss={metrics[loss_key]:.4g}")
    if "eval/accuracy" in metrics:
        parts.append(f"eval={metrics['eval/accuracy']:.3g}")
    if "time/step" in metrics:
        parts.append(f"t={metrics['time/step']:.1f}s")
    return " ".join(parts)


def format_eval_line(step: int, metrics: Mapping[str, float]) -> str | None:
    """The console line of a periodic evaluation, ``step 20: eval accuracy=0.41 pass@4=0.62 ...`` (None: no eval)."""
    keys = sorted(k for k in metrics if k.startswith("eval/"))
    if not keys:
        return None
    keys.sort(key=lambda k: k != "eval/accuracy")  # accuracy first, the rest alphabetical
    return f"step {step}: eval " + " ".join(f"{k[len('eval/'):]}={metrics[k]:.4g}" for k in keys)


class MetricsLogger:
    """Per-step metrics to ``metrics.jsonl``, TensorBoard and (``wandb.enabled``) Weights & Biases, a tqdm bar and
    one line per evaluation on the console, and the curves PNG at close.

    Only global rank 0 should pass ``enabled=True``; a disabled logger touches no file and prints nothing.
    """

    def __init__(self, output_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 curve_panels: tuple[Panel, ...] = PANELS, wandb: WandbConfig | None = None,
                 run_config: Mapping[str, Any] | None = None) -> None:
        if total_steps < 0 or start_step < 0:
            raise ValueError(f"total_steps and start_step must be >= 0, got {total_steps}, {start_step}")
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / METRICS_FILE
        self.tb_dir = self.output_dir / TB_DIR
        self.curves_path = self.output_dir / CURVES_FILE
        self.curve_panels = curve_panels
        self._closed = not enabled
        self._writer: Any = None
        self._bar: Any = None
        self._file: Any = None
        self._wandb: Any = None
        self._last_step = start_step
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard only for an enabled logger

        with self._full_disk():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            dropped = 0
            if start_step > 0:
                dropped = truncate_metrics(self.metrics_path, start_step)
            elif self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run: the file reads as this run only
            self._file = open(self.metrics_path, "a", encoding="utf-8")
            # purge_step hides events at steps >= purge_step that an earlier (crashed) run wrote to the same folder.
            self._writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, file=console_stream(), unit="step", dynamic_ncols=True,
                         desc="train", smoothing=0.3)
        if wandb is not None and wandb.enabled:
            self._wandb = WandbRun.start(wandb, run_config or {}, self.output_dir, start_step=start_step)
        if dropped:
            self.note(f"resume: dropped {dropped} metrics lines logged after step {start_step}")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` for ``step`` (JSONL line, TensorBoard scalars) and advance the progress bar to it."""
        if not self.enabled:
            return
        if self._closed:
            raise RuntimeError("MetricsLogger.log called after close()")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if key == "step":
                raise ValueError("metric key 'step' is reserved (pass the step as the first argument)")
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"metric {key!r} must be a number, got {value!r}") from None
        row = {"step": int(step), **{k: _json_value(v) for k, v in values.items()}}
        with self._full_disk():  # append-only files: a torn last line is dropped on resume
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=int(step))
        if self._wandb is not None:
            self._wandb.log(int(step), values)
        advance = int(step) - self._last_step
        if advance > 0:
            self._bar.update(advance)
            self._last_step = int(step)
        postfix = format_postfix(values)
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=True)
        eval_line = format_eval_line(int(step), values)
        if eval_line is not None:
            self.note(eval_line)

    def note(self, text: str) -> None:
        """Print a line on the console (the terminal, also when third-party output goes to train.log) without
        breaking the progress bar."""
        if not self.enabled:
            return

        tqdm.write(text, file=console_stream())

    def flush(self) -> None:
        """Flush the JSONL file and the TensorBoard writer (e.g. before a checkpoint)."""
        if self.enabled and not self._closed:
            with self._full_disk():
                self._file.flush()
                os.fsync(self._file.fileno())
                self._writer.flush()

    def close(self) -> Path | None:
        """Flush and close everything and write ``curves.png``; returns its path (None when disabled)."""
        if not self.enabled:
            return None
        if self._closed:
            return self.curves_path
        self._closed = True
        self._bar.close()
        with self._full_disk():
            try:
                self._file.flush()
            finally:
                self._file.close()
                self._writer.close()  # flushes (TensorBoard's writer thread raises a failed write here)
        started = time.perf_counter()
        with self._full_disk():
            plot_curves(self.metrics_path, self.curves_path, self.curve_panels)
        self.note(f"curves: {self.curves_path} ({time.perf_counter() - started:.1f}s); "
                  f"metrics: {self.metrics_path}; tensorboard --logdir {self.tb_dir}")
        if self._wandb is not None:
            self._wandb.finish(self.curves_path)
            self.note(f"wandb: {self._wandb.directory}")
        return self.curves_path

    def _full_disk(self):
        """A full disk while writing the metrics, TensorBoard events or curves: :class:`DiskFullError` naming the
        output folder."""
        return disk_full_guard(self.output_dir, "the metrics (metrics.jsonl, tb/, curves.png) under",
                               "the checkpoints are intact: free some space, then continue with --resume")

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
