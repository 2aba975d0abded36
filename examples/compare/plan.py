"""The list of runs of a comparison and each run's trainer config (through :func:`recipes.small.small_run_config`).

A run is (task, algorithm, alpha, seed, rollout mode). Every run of a task has the same student initialisation,
teacher, data, rollout budget (steps x prompts_per_step x group_size), optimiser and loss settings; only
``loss.algorithm``, ``loss.alpha``, ``trainer.seed`` (sampling and data order) and the rollout mode (sync, or async:
one step off-policy) differ. ``sft`` is offline distillation: the engine serves the teacher and the student trains
on its reward-filtered samples (same number of samples per step).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from examples.compare.prepare import Prepared
from examples.compare.settings import COMPARED_ALGORITHMS, ROLLOUT_MODES, TaskSettings, split_arm, variant_loss
from recipes.small import small_run_config
from rlad_megatron.config import RunConfig


@dataclass(frozen=True)
class RunSpec:
    task: str
    algorithm: str
    alpha: float
    seed: int
    rollout_mode: str = "sync"
    variant: str = ""
    """An arm variant of :data:`examples.compare.settings.ARM_VARIANTS` ("topk", "gate"; "" for none)."""

    @property
    def name(self) -> str:
        """``<algorithm>-s<seed>``, or ``rlad-a<alpha>-s<seed>`` for rlad (the sweep's runs); ``-async`` before the
        seed for an asynchronous run (``grpo-async-s0``); ``+<variant>`` after the algorithm (``rlad+gate-a0.5-s0``).
        Synchronous names are those of the earlier results."""
        mode = "" if self.rollout_mode == "sync" else f"-{self.rollout_mode}"
        arm = f"{self.algorithm}+{self.variant}" if self.variant else self.algorithm
        if self.algorithm == "rlad":
            return f"{arm}-a{self.alpha:g}{mode}-s{self.seed}"
        return f"{arm}{mode}-s{self.seed}"

    @property
    def label(self) -> str:
        """The table's row label: the algorithm, with alpha for rlad, `` +<variant>``, and `` (async)`` for an
        asynchronous run."""
        base = f"rlad a={self.alpha:g}" if self.algorithm == "rlad" else self.algorithm
        base += f" +{self.variant}" if self.variant else ""
        return base if self.rollout_mode == "sync" else f"{base} ({self.rollout_mode})"


def plan_runs(task: str, *, seeds: Sequence[int], algorithms: Sequence[str] = COMPARED_ALGORITHMS, alpha: float = 0.5,
              sweep_alphas: Sequence[float] = (), sweep_seeds: Sequence[int] = (),
              rollout_modes: Sequence[str] = ("sync",)) -> list[RunSpec]:
    """The main comparison (``algorithms`` x ``seeds``, rlad at ``alpha``; an algorithm may name a variant,
    ``rlad+gate``) then the sweep (rlad at each of
    ``sweep_alphas`` x ``sweep_seeds``), each in every one of ``rollout_modes`` (the modes of one algorithm and
    seed next to each other, so that an interrupted comparison leaves complete pairs), without duplicates, in a
    stable order."""
    for mode in rollout_modes:
        if mode not in ROLLOUT_MODES:
            raise ValueError(f"unknown rollout mode {mode!r}; choose from {list(ROLLOUT_MODES)}")
    runs: list[RunSpec] = []
    for arm in algorithms:
        algorithm, variant = split_arm(arm)
        for seed in seeds:
            for mode in rollout_modes:
                runs.append(RunSpec(task, algorithm, alpha if algorithm == "rlad" else 1.0, seed, mode, variant))
    for a in sweep_alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha {a} is outside [0, 1]")
        for seed in sweep_seeds:
            for mode in rollout_modes:
                runs.append(RunSpec(task, "rlad", float(a), seed, mode))
    seen: set[RunSpec] = set()
    return [r for r in runs if not (r in seen or seen.add(r))]


def comparison_run_config(run: RunSpec, s: TaskSettings, prepared: Prepared, output_dir: Path) -> RunConfig:
    """The trainer's (validated) config for one run: the task's RL budget with the run's algorithm, alpha, seed and
    rollout mode (and the variant's extra ``loss.*`` settings)."""
    rl = s.rl
    if run.variant:
        rl = dataclasses.replace(rl, loss={**rl.loss, **variant_loss(run.variant)})
    return small_run_config(rl, task=s.task, student=str(prepared.student), teacher=str(prepared.teacher),
                            train_files=[str(prepared.files.train)], output_dir=str(output_dir), seed=run.seed,
                            algorithm=run.algorithm, alpha=run.alpha, rollout_mode=run.rollout_mode)
