"""Small distillation runs on CPU, as the examples make them (``make demo`` and the algorithm comparison): the RL
settings they vary (:class:`SmallRun`) and the one function that turns them into the trainer's ``RunConfig``.

    config = small_run_config(SmallRun(steps=100, lr=2e-4), task="arithmetic", student=..., teacher=...,
                              train_files=[...], output_dir="runs/x", seed=1234)

Fixed for every small run: fp32 learner and engine, one vLLM engine per data-parallel replica (colocated, or in a
process of its own for asynchronous rollouts), cosine
decay to a tenth of the learning rate, gradient clipping at 1, the final student exported as Hugging Face files.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlad_megatron.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
)
from rlad_megatron.config.loss import LossConfig


@dataclass
class SmallRun:
    """The RL part of a small run: algorithm, rollout budget, optimiser, lengths, layout."""

    steps: int = 100
    """Rollout batches (= weight syncs)."""
    algorithm: str = "rlad"
    alpha: float = 0.5
    """RLAD's alpha (weight on the old student); used by rlad only."""
    prompts_per_step: int = 8
    group_size: int = 8
    """G responses per prompt; rollouts per run = steps x prompts_per_step x group_size."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch (> 1 makes pi_old differ from the current policy, so the clip acts)."""
    micro_batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (then cosine to lr / 10)."""
    temperature: float = 1.0
    max_new_tokens: int = 48
    max_prompt_tokens: int = 32
    kv_cache_mb: int = 64
    tensor_parallel: int = 1
    nproc: int = 1
    """torchrun processes (data parallel = nproc / tensor_parallel)."""
    save_every: int = 0
    loss: dict[str, Any] = field(default_factory=dict)
    """Extra ``loss.*`` fields for every run (e.g. ``{"teacher_log_ratio_clip": 2.0}``)."""
    rollout_mode: str = "sync"
    """"sync" (the colocated engine generates each batch, then the learner trains on it) or "async" (the engine in
    its own process generates batch t+1 while the learner trains on batch t: ``rollout.mode=async``,
    ``max_staleness=1``, disaggregated placement; docs/async_rollouts.md)."""
    async_engine_cpus: int = 1
    """async only: ``rollout.engine_cpus``. 1 pins the engine process to one core with one OpenMP thread and leaves
    the learner one thread: without pinning vLLM binds its threads to every core and they fight the learner's
    (measured 22.7 s a step against ~1.3 on the 2-core machine, docs/async_rollouts.md)."""


def small_run_config(run: SmallRun, *, task: str, student: str, teacher: str | None, train_files: Sequence[str],
                     output_dir: str, seed: int, algorithm: str | None = None, alpha: float | None = None,
                     eval_files: Sequence[str] = (), rollout_mode: str | None = None) -> RunConfig:
    """The validated ``RunConfig`` of ``run`` on these models and files. ``algorithm`` / ``alpha`` /
    ``rollout_mode`` override the run's (the comparison varies them per run)."""
    algorithm = run.algorithm if algorithm is None else algorithm
    mode = run.rollout_mode if rollout_mode is None else rollout_mode
    if mode not in ("sync", "async"):
        raise ValueError(f"rollout mode {mode!r}: choose 'sync' or 'async'")
    # async: one step off-policy, the engine in its own process (required), pinned to its own core(s) on CPU.
    rollout_layout: dict[str, Any] = (dict(placement="disaggregated", mode="async", max_staleness=1,
                                           engine_cpus=run.async_engine_cpus)
                                      if mode == "async" else dict(placement="colocated"))
    loss = LossConfig(**{**run.loss, "algorithm": algorithm})
    if algorithm == "rlad":
        loss = dataclasses.replace(loss, alpha=run.alpha if alpha is None else alpha)
    config = RunConfig(
        model=ModelConfig(student=str(student), teacher=None if teacher is None else str(teacher),
                          params_dtype="float32"),
        parallel=ParallelConfig(tensor_parallel=run.tensor_parallel),
        rollout=RolloutConfig(group_size=run.group_size, temperature=run.temperature,
                              max_new_tokens=run.max_new_tokens, dtype="float32", kv_cache_mb=run.kv_cache_mb,
                              **rollout_layout),
        data=DataConfig(task=task, train_files=[str(f) for f in train_files], eval_files=[str(f) for f in eval_files],
                        prompts_per_step=run.prompts_per_step, max_prompt_tokens=run.max_prompt_tokens),
        optim=OptimConfig(lr=run.lr, min_lr=run.lr / 10, warmup_steps=run.warmup_steps, clip_grad=1.0),
        loss=loss,
        trainer=TrainerConfig(steps=run.steps, micro_batch_size=run.micro_batch_size,
                              updates_per_batch=run.updates_per_batch, save_every=run.save_every,
                              output_dir=str(output_dir), export_hf=True, seed=seed),
    )
    return config.validate()
