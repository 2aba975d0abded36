"""The list of runs of a comparison and each run's trainer config.

A run is (task, algorithm, alpha, seed). Every run of a task has the same student initialisation, teacher, data,
rollout budget (steps x prompts_per_step x group_size), optimiser and loss settings; only ``loss.algorithm``,
``loss.alpha`` and ``trainer.seed`` (sampling and data order) differ. ``sft`` is offline distillation: the engine
serves the teacher and the student trains on its reward-filtered samples (same number of samples per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from examples.compare.prepare import Prepared
from examples.compare.settings import ALGORITHMS, TaskSettings


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


def plan_runs(task: str, *, seeds: Sequence[int], algorithms: Sequence[str] = ALGORITHMS, alpha: float = 0.5,
              sweep_alphas: Sequence[float] = (), sweep_seeds: Sequence[int] = ()) -> list[RunSpec]:
    """The main comparison (``algorithms`` x ``seeds``, rlad at ``alpha``) then the sweep (rlad at each of
    ``sweep_alphas`` x ``sweep_seeds``), without duplicates, in a stable order."""
    runs: list[RunSpec] = []
    for algorithm in algorithms:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose from {list(ALGORITHMS)}")
        for seed in seeds:
            runs.append(RunSpec(task, algorithm, alpha if algorithm == "rlad" else 1.0, seed))
    for a in sweep_alphas:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha {a} is outside [0, 1]")
        for seed in sweep_seeds:
            runs.append(RunSpec(task, "rlad", float(a), seed))
    seen: set[RunSpec] = set()
    return [r for r in runs if not (r in seen or seen.add(r))]


def train_config(run: RunSpec, s: TaskSettings, prepared: Prepared, output_dir: Path) -> dict[str, Any]:
    """The trainer's config (sections of :class:`rlad_megatron.config.RunConfig`) for one run, TP=1."""
    rl = s.rl
    return {
        "model": {"student": str(prepared.student), "teacher": str(prepared.teacher), "params_dtype": "float32"},
        "parallel": {"tensor_parallel": 1},
        "rollout": {"group_size": rl.group_size, "temperature": rl.temperature, "max_new_tokens": rl.max_new_tokens,
                    "dtype": "float32", "kv_cache_mb": rl.kv_cache_mb, "placement": "colocated"},
        "data": {"task": s.task, "train_files": [str(prepared.files.train)], "prompts_per_step": rl.prompts_per_step,
                 "max_prompt_tokens": rl.max_prompt_tokens},
        "optim": {"lr": rl.lr, "min_lr": rl.lr / 10, "warmup_steps": rl.warmup_steps, "clip_grad": 1.0},
        "loss": {**rl.loss, "algorithm": run.algorithm, **({"alpha": run.alpha} if run.algorithm == "rlad" else {})},
        "trainer": {"steps": rl.steps, "micro_batch_size": rl.micro_batch_size,
                    "updates_per_batch": rl.updates_per_batch, "output_dir": str(output_dir), "export_hf": True,
                    "seed": run.seed},
    }
