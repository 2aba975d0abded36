"""The list of runs of a comparison and each run's trainer config (through :func:`recipes.small.small_run_config`).

A run is (task, algorithm, alpha, seed). Every run of a task has the same student initialisation, teacher, data,
rollout budget (steps x prompts_per_step x group_size), optimiser and loss settings; only ``loss.algorithm``,
``loss.alpha`` and ``trainer.seed`` (sampling and data order) differ. ``sft`` is offline distillation: the engine
serves the teacher and the student trains on its reward-filtered samples (same number of samples per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from examples.compare.prepare import Prepared
from examples.compare.settings import COMPARED_ALGORITHMS, TaskSettings
from recipes.small import small_run_config
from rlad_megatron.config import RunConfig


@dataclass(frozen=True)
class RunSpec:
    task: str
    algorithm: str
    alpha: float
    seed: int

    @property
    def name(self) -> str:
        """``<algorithm>-s<seed>``, or ``rlad-a<alpha>-s<seed>`` for rlad (the sweep's runs)."""
        if self.algorithm == "rlad":
            return f"rlad-a{self.alpha:g}-s{self.seed}"
        return f"{self.algorithm}-s{self.seed}"

    @property
    def label(self) -> str:
        """The table's row label: the algorithm, with alpha for rlad."""
        return f"rlad a={self.alpha:g}" if self.algorithm == "rlad" else self.algorithm


def plan_runs(task: str, *, seeds: Sequence[int], algorithms: Sequence[str] = COMPARED_ALGORITHMS, alpha: float = 0.5,
              sweep_alphas: Sequence[float] = (), sweep_seeds: Sequence[int] = ()) -> list[RunSpec]:
    """The main comparison (``algorithms`` x ``seeds``, rlad at ``alpha``) then the sweep (rlad at each of
    ``sweep_alphas`` x ``sweep_seeds``), without duplicates, in a stable order."""
    runs: list[RunSpec] = []
    for algorithm in algorithms:
        if algorithm not in COMPARED_ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose from {list(COMPARED_ALGORITHMS)}")
        for seed in seeds:
            runs.append(RunSpec(task, algorithm, alpha if algorithm == "rlad" else 1.0, seed))
    for a in sweep_alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha {a} is outside [0, 1]")
        for seed in sweep_seeds:
            runs.append(RunSpec(task, "rlad", float(a), seed))
    seen: set[RunSpec] = set()
    return [r for r in runs if not (r in seen or seen.add(r))]


def comparison_run_config(run: RunSpec, s: TaskSettings, prepared: Prepared, output_dir: Path) -> RunConfig:
    """The trainer's (validated) config for one run: the task's RL budget with the run's algorithm, alpha, seed."""
    return small_run_config(s.rl, task=s.task, student=str(prepared.student), teacher=str(prepared.teacher),
                            train_files=[str(prepared.files.train)], output_dir=str(output_dir), seed=run.seed,
                            algorithm=run.algorithm, alpha=run.alpha)
