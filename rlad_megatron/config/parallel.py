"""``parallel``: how the learner (and the Megatron teacher) is split: TP, PP (even or uneven stages), SP, CP, EP,
and activation recomputation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlad_megatron.config.validators import ConfigError, at_least, choice

Recompute = Literal["none", "selective", "full"]


@dataclass
class ParallelConfig:
    """The learner's parallel layout and activation recomputation."""

    tensor_parallel: int = 1
    """Tensor-parallel size of the learner (and of the Megatron teacher)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size; data parallelism is world_size / (tensor_parallel * pipeline_parallel)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tensor_parallel > 1)."""
    first_stage_layers: int | None = None
    """Student layers on the first pipeline stage (uneven PP; None: an even stage). The stages without an explicit
    count split the other layers evenly."""
    last_stage_layers: int | None = None
    """Student layers on the last pipeline stage (uneven PP; None: an even stage)."""
    teacher_first_stage_layers: int | None = None
    """The Megatron teacher's layers on the first pipeline stage (it may be deeper than the student)."""
    teacher_last_stage_layers: int | None = None
    """The Megatron teacher's layers on the last pipeline stage."""
    context_parallel: int = 1
    """Context-parallel size: each row split across this many ranks (TE's attention on GPUs, an all-gather
    attention of ours without TE; docs/token_budgets.md)."""
    expert_parallel: int = 1
    """Expert-parallel size of the Mixture-of-Experts models (student and Megatron teacher): each MoE layer's
    routed experts are split over this many data-parallel ranks of a pipeline stage (a divisor of
    world_size / pipeline_parallel, dividing the experts per layer). Dense models ignore it."""
    expert_tensor_parallel: int = 1
    """Tensor-parallel size inside each routed expert; only 1 is supported (experts are placed whole)."""
    recompute: Recompute = "none"
    """Activation recomputation in the learner: "none", "selective" (attention core only) or "full" (whole
    layers, recompute_num_layers per chunk)."""
    recompute_num_layers: int = 1
    """With recompute="full": layers per recomputed chunk (Megatron's uniform method)."""

    def validate(self) -> None:
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ConfigError("parallel.tensor_parallel and parallel.pipeline_parallel must be >= 1")
        for name in ("first_stage_layers", "last_stage_layers", "teacher_first_stage_layers",
                     "teacher_last_stage_layers"):
            value = getattr(self, name)
            if value is not None and (value < 1 or self.pipeline_parallel == 1):
                raise ConfigError(f"parallel.{name}={value}: must be >= 1 and needs parallel.pipeline_parallel > 1 "
                                  "(the model's layer count is checked when it is loaded)")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("parallel.sequence_parallel=true needs parallel.tensor_parallel > 1")
        at_least("parallel.context_parallel", self.context_parallel, 1)
        at_least("parallel.expert_parallel", self.expert_parallel, 1)
        if self.expert_tensor_parallel != 1:
            raise ConfigError(f"parallel.expert_tensor_parallel={self.expert_tensor_parallel}: only 1 is supported "
                              "(routed experts are placed whole, split over parallel.expert_parallel ranks; the "
                              "name table, conversion and weight sync have no expert-TP slicing): set it to 1 and "
                              "raise parallel.expert_parallel instead")
        choice("parallel.recompute", self.recompute, Recompute)
        at_least("parallel.recompute_num_layers", self.recompute_num_layers, 1)
