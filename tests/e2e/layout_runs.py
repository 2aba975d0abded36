"""The real trainer at TP=1, TP=2, PP=2, DP=2 and CP=2 on warm-started tiny models (a test helper; the library never
imports it). Each layout is launched once per session, on first use (fixture ``layout_runs`` in
tests/e2e/conftest.py): test_trainer_layouts compares and checks them all, and test_console_quiet checks the TP=2
run's console and log (that run also logs to W&B, offline, for that check), which saves it a launch of its own."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlad_megatron.testing.tiny_run import launch, prepare_warm_models, read_metrics, run_config

STEPS = 24
EVAL_EVERY = 12
LAYOUTS = {  # name: (processes, parallel section, steps)
    "tp1": (1, {}, STEPS),
    "tp2": (2, {"tensor_parallel": 2}, STEPS),
    "pp2": (2, {"pipeline_parallel": 2}, STEPS),
    "dp2": (2, {}, 2),
    "cp2": (2, {"context_parallel": 2}, 2),  # each sequence split over 2 ranks (models.cp_attention on CPU)
}
#: The layout whose console test_console_quiet reads; W&B (offline, no account) is on in it.
CONSOLE_LAYOUT = "tp2"


@dataclass
class LayoutRun:
    metrics: list[dict]
    console: str
    """What the launch printed (stdout and stderr of torchrun and the ranks)."""
    output_dir: Path


class LayoutRuns:
    """``runs[name]``: the finished run of layout ``name`` (launched on first access, then kept)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._paths: dict | None = None
        self._runs: dict[str, LayoutRun] = {}

    @property
    def paths(self) -> dict:
        if self._paths is None:
            self._paths = prepare_warm_models(self.root / "models")
        return self._paths

    def __getitem__(self, name: str) -> LayoutRun:
        if name not in self._runs:
            self._runs[name] = self._launch(name)
        return self._runs[name]

    def _launch(self, name: str) -> LayoutRun:
        nproc, parallel, steps = LAYOUTS[name]
        workdir = self.root / name
        trainer = {"steps": steps, "micro_batch_size": 16, "updates_per_batch": 4, "export_hf": False,
                   "eval_every": EVAL_EVERY, "eval_samples": 2}
        env = None
        if name == CONSOLE_LAYOUT:
            trainer["wandb"] = {"enabled": True, "mode": "offline"}
            env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_CONFIG_DIR": str(workdir / "no-wandb-login")}
        # Four updates per rollout batch: old-policy log-probs are computed (not the detached current ones).
        config = run_config(
            self.paths, workdir / "out", parallel=parallel, rollout={"group_size": 8, "max_new_tokens": 20},
            data={"prompts_per_step": 16, "eval_files": [self.paths["train"]]},
            optim={"lr": 3e-4, "min_lr": 3e-4},  # constant: dp2 runs fewer steps
            trainer=trainer,
            loss={"algorithm": "rlad", "alpha": 0.5},
        )
        done = launch(config, nproc, workdir=workdir, timeout=900, extra_env=env)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-6000:]}"
        return LayoutRun(read_metrics(workdir / "out"), done.stdout, workdir / "out")
