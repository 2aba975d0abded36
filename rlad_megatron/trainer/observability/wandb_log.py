"""Weights & Biases logging of a run's per-step metrics (``trainer.wandb.enabled=true``; global rank 0 only).

    run = WandbRun.start(config.trainer.wandb, run_config_to_dict(config), output_dir, start_step=0)
    run.log(step, {"reward/mean": 0.4, ...})
    run.finish(curves_png)

``wandb`` is imported only here and only when enabled. The W&B run id is kept in ``output_dir/wandb_run_id`` so that
a resumed training run continues the same W&B run instead of starting a second one. The API key comes from
``wandb login`` or ``WANDB_API_KEY``; it is never read from or written to the run config.
"""
from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any, Mapping

from rlad_megatron.atomic_write import write_text
from rlad_megatron.config import WandbConfig

RUN_ID_FILE = "wandb_run_id"


def _import_wandb() -> Any:
    try:
        import wandb  # optional dependency (trainer.wandb.enabled)
    except ImportError:
        raise RuntimeError(
            "trainer.wandb.enabled=true needs the wandb package: pip install 'rlad-megatron[wandb]' "
            "(or set trainer.wandb.enabled=false)"
        ) from None
    return wandb


class WandbRun:
    """One W&B run, fed the same metrics as metrics.jsonl and TensorBoard."""

    def __init__(self, run: Any, wandb: Any) -> None:
        self._run = run
        self._wandb = wandb

    @classmethod
    def start(cls, cfg: WandbConfig, run_config: Mapping[str, Any], output_dir: Path,
              start_step: int = 0) -> "WandbRun":
        """Start (or, when ``start_step > 0`` and an id was saved, resume) the W&B run of ``output_dir``."""
        wandb = _import_wandb()
        output_dir = Path(output_dir)
        id_file = output_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if start_step > 0 and id_file.exists() else None
        run_id = run_id or uuid.uuid4().hex[:16]
        directory = Path(cfg.dir) if cfg.dir else output_dir
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=cfg.name or output_dir.resolve().name, group=cfg.group,
            tags=list(cfg.tags) or None, mode=cfg.mode, dir=str(directory), id=run_id,
            resume="allow" if cfg.mode == "online" else None,  # offline: the same id; `wandb sync` joins them
            config=dict(run_config),
            # Our console shows the progress bar; W&B's own messages and the captured output would duplicate it.
            settings=wandb.Settings(console="off", silent=True),
        )
        write_text(id_file, run_id + "\n")
        return cls(run, wandb)

    @property
    def directory(self) -> Path:
        """The folder of this run's W&B files (``<dir>/wandb/<offline-|>run-<time>-<id>``)."""
        return Path(self._run.dir).parent

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        # W&B stores NaN/inf as such; keep them out like metrics.jsonl does (null there, absent here).
        values = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        self._run.log(values, step=int(step))

    def finish(self, curves_png: Path | None = None) -> None:
        if curves_png is not None and Path(curves_png).exists():
            self._run.log({"curves": self._wandb.Image(str(curves_png))})
        self._run.finish()
