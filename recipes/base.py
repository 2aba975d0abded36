"""The shared base of every recipe: a ``Recipe`` is a full ``RunConfig`` plus the node/GPU layout it runs on.

A recipe function (``recipes.paper.logic_qwen3_0p6b``, ...) returns a :class:`Recipe`; ``recipes.executors`` turns
it into a NeMo-Run executor and a ``run.Script`` that starts, on every node::

    torchrun --nnodes N --nproc-per-node G ... -m rlad_megatron.cli train section.key=value ...

The trainer's configuration travels entirely on that command line, as the dotted overrides that differ from the
``RunConfig`` defaults (:func:`config_overrides`), so that the sbatch script alone says what runs and no config file
has to be shipped to the cluster.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from rlad_megatron.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    run_config_from_dict,
    run_config_to_dict,
)
from rlad_megatron.config.parsing import flatten_dotted
from rlad_megatron.memory_plan import MemoryPlan, plan_memory
from rlad_megatron.memory_plan.pools import (
    PoolLayout, describe_balance, estimate_costs, pool_memory, predict, propose, step_work,
)
from rlad_megatron.placement import ModelShape, Placement, plan_placement

#: Environment of every GPU job (the recipes add their own).
GPU_ENV: dict[str, str] = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron: TP/SP communication must be issued in kernel order
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",  # frees NCCL buffers promptly (less fragmentation with vLLM)
    "HF_HUB_OFFLINE": "1",  # checkpoints come from mounted directories; compute nodes must not reach the hub
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
#: Environment of CPU jobs (the quickstart): one OpenMP thread per rank so that ranks do not fight for cores.
CPU_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}

TRAIN_MODULE = "rlad_megatron.cli"

#: Keys always written on the command line, even at their defaults, so that the sbatch script states the paper's
#: settings and a later change of a default cannot silently change a recipe.
PINNED_KEYS: tuple[str, ...] = (
    "loss.algorithm", "loss.alpha", "loss.eps_low", "loss.eps_high", "optim.lr", "rollout.group_size",
    "data.prompts_per_step", "parallel.tensor_parallel", "parallel.pipeline_parallel", "trainer.steps",
)


@dataclass
class Recipe:
    """A run: its configuration, where it runs, and what to check before launching it."""

    name: str
    description: str
    config: RunConfig
    nodes: int = 1
    gpus_per_node: int = 8
    """Ranks per node (torchrun ``--nproc-per-node``): GPUs on GPU jobs, processes on CPU jobs."""
    rollout_gpus: int = 0
    """GPUs reserved for disaggregated rollout engines (0 when colocated)."""
    teacher_gpus: int = 0
    """GPUs of a teacher pool of its own (``teacher.placement=separate``: ``teacher.ranks`` for a Megatron teacher,
    one per learner replica for a vLLM teacher); 0: what the config's pool needs (none without a pool)."""
    student_shape: ModelShape | None = None
    teacher_shape: ModelShape | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(GPU_ENV))
    gpu: bool = True
    """Whether the job needs GPUs (the Slurm executor then asks for ``gpus_per_node`` GPUs per node)."""
    gpu_memory: str = "h100"
    """The GPU the memory plan checks against: "h100", "h200" or a size in GiB (``python -m recipes --gpu``)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def ranks_per_node(self) -> int:
        """torchrun processes per node: its GPUs (CPU processes) less the engines', which are processes of their own
        on each node's last GPUs (disaggregated rollout engines, a vLLM teacher pool: ``Placement.ranks_per_node``)."""
        return self.placement().ranks_per_node

    def with_overrides(self, overrides: list[str]) -> "Recipe":
        """A copy with dotted ``section.key=value`` overrides applied to the config (validated)."""
        if not overrides:
            return self
        data = apply_overrides(run_config_to_dict(self.config), list(overrides))
        return dataclasses.replace(self, config=run_config_from_dict(data))

    def with_layout(self, *, nodes: int | None = None, gpus_per_node: int | None = None) -> "Recipe":
        """A copy on another allocation (checked by :meth:`validate`)."""
        return dataclasses.replace(self, nodes=self.nodes if nodes is None else nodes,
                                   gpus_per_node=self.gpus_per_node if gpus_per_node is None else gpus_per_node)

    def placement(self) -> Placement:
        """The checked layout on ``nodes x gpus_per_node`` (raises ``PlacementError`` explaining the arithmetic)."""
        return plan_placement(self.config, nodes=self.nodes, gpus_per_node=self.gpus_per_node,
                              rollout_gpus=self.rollout_gpus, teacher_gpus=self.teacher_gpus or None,
                              student=self.student_shape, teacher=self.teacher_shape)

    def with_gpu(self, gpu_memory: str | None) -> "Recipe":
        """A copy planned against another GPU ("h100", "h200" or GiB); None keeps this one."""
        return self if gpu_memory is None else dataclasses.replace(self, gpu_memory=gpu_memory)

    def memory_plan(self, placement: Placement | None = None) -> MemoryPlan | None:
        """The per-GPU memory plan (``rlad_megatron.memory_plan``), or None without the student's shape.

        GPU recipes are planned against ``gpu_memory`` with Transformer Engine's fused attention (the GPU image);
        CPU recipes (the quickstart) get the same arithmetic with no limit, the local attention and no CUDA reserve.
        """
        if self.student_shape is None or not self.student_shape.vocab_size:
            return None
        placement = placement or self.placement()
        extra = {} if self.gpu else dict(runtime_reserve_gib=0.0, engine_runtime_gib=0.0, chunk_elements=1 << 20)
        return plan_memory(self.config, student=self.student_shape, teacher=self.teacher_shape, dp=placement.dp,
                           gpu=self.gpu_memory if self.gpu else None,
                           fused_attention=self.gpu, **extra)

    def pool_layout(self, placement: Placement | None = None) -> PoolLayout:
        """GPUs of the learner, the rollout engines and the teacher (0: on the learner's)."""
        placement = placement or self.placement()
        return PoolLayout(placement.learner_gpus, placement.rollout_gpus, placement.teacher_gpus)

    def pool_plans(self, placement: Placement | None = None) -> dict[str, MemoryPlan]:
        """One GPU's memory plan per pool (the learner's is :meth:`memory_plan`); empty without model shapes."""
        if self.student_shape is None or not self.student_shape.vocab_size:
            return {}
        extra = {} if self.gpu else dict(runtime_reserve_gib=0.0, engine_runtime_gib=0.0, chunk_elements=1 << 20)
        return pool_memory(self.config, student=self.student_shape, teacher=self.teacher_shape,
                           layout=self.pool_layout(placement), gpu=self.gpu_memory if self.gpu else None,
                           fused_attention=self.gpu, **extra)

    def balance(self, placement: Placement | None = None, proposals: int = 3) -> str | None:
        """The three-pool throughput balance on this recipe's GPU count (estimated per-token costs on its GPU), as
        ``--plan`` prints it; None for CPU recipes (no GPU figures) or without model shapes."""
        if not self.gpu or self.student_shape is None or not self.student_shape.vocab_size:
            return None
        layout = self.pool_layout(placement)
        engines = (placement or self.placement()).num_engines
        costs = estimate_costs(self.config, student=self.student_shape, teacher=self.teacher_shape,
                               gpu=self.gpu_memory, engines=engines)
        work = step_work(self.config)
        current = predict(self.config, layout, costs, work)
        best = propose(self.config, layout.total, costs, work)[:proposals]
        return describe_balance(self.config, best, costs, current)

    def launch_blocker(self) -> str | None:
        """Why this recipe can be planned but not launched, or None (none today: expert parallelism, the last
        plan-only setting, runs in the trainer since issue 19)."""
        return None

    def validate(self, *, check_memory: bool = True) -> Placement:
        """Check everything that can be checked on the launching machine; returns the placement.

        ``RunConfig.validate`` probes no hardware, so this runs on a login node or a laptop; FP8's hardware check
        (CUDA, Transformer Engine) happens when the job starts (``rlad_megatron.fp8.check_run_hardware``). A GPU
        recipe whose memory plan does not fit ``gpu_memory`` is refused (``MemoryPlanError``, naming the largest
        terms and the settings that would fit) unless ``check_memory=False``.
        """
        self.config.validate()
        placement = self.placement()
        if check_memory and self.launch_blocker():
            raise ConfigError(self.launch_blocker())
        if check_memory and self.gpu:
            plan = self.memory_plan(placement)
            if plan is not None:
                plan.check()
            for pool, pool_plan in self.pool_plans(placement).items():
                if pool != "learner":
                    try:
                        pool_plan.check()
                    except ConfigError as err:
                        raise type(err)(f"the {pool} pool's GPU: {err}") from None
        return placement

    def train_args(self) -> list[str]:
        """The arguments after ``-m rlad_megatron.cli``: ``train`` and the config's non-default overrides."""
        return ["train", *config_overrides(self.config)]


_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def format_value(value: Any) -> str:
    """A value as the trainer's override parser (YAML scalars, comma lists) reads it back.

    Only characters that need no shell quoting are used: NeMo-Run's torchrun launcher shell-quotes each argument,
    and its local executor then passes the quotes through literally, so a quoted argument would not parse.
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot pass the non-finite number {value!r} as an override")
        return repr(value)  # '1e-06' reads back as a string that the config coerces to float
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not _SAFE.match(value):
            raise ConfigError(f"cannot pass {value!r} on the launch command line: use only letters, digits and "
                              "_@%+=:,./- (no spaces or quotes; e.g. rename the path)")
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError("cannot pass an empty list as an override (leave the key at its default)")
        items = [format_value(v) for v in value]
        if any("," in item for item in items):
            raise ConfigError(f"list items cannot contain ',' on the command line: {list(value)!r}")
        return ",".join(items)
    raise ConfigError(f"cannot pass {value!r} ({type(value).__name__}) as an override")


def config_overrides(config: RunConfig, pinned: tuple[str, ...] = PINNED_KEYS) -> list[str]:
    """``section.key=value`` for the ``pinned`` keys and every other field that differs from the defaults."""
    ours = flatten_dotted(run_config_to_dict(config))
    defaults = flatten_dotted(run_config_to_dict(RunConfig()))
    overrides = [f"{key}={format_value(value)}" for key, value in ours.items()
                 if key in pinned or defaults.get(key) != value]
    back = flatten_dotted(run_config_to_dict(run_config_from_dict(apply_overrides({}, list(overrides)))))
    wrong = [key for key in ours if back.get(key) != ours[key]]
    if wrong:  # e.g. the string "true" would come back as a boolean
        key = wrong[0]
        raise ConfigError(f"{key}={ours[key]!r} would not read back as given from the command line "
                          f"(it reads as {back.get(key)!r}): choose another value")
    return overrides
