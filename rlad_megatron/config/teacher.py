"""``teacher``: where the teacher's log-probs come from, whether the Megatron teacher waits in host memory, and
whether it runs in a pool of its own (``placement: separate``, docs/large_models.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlad_megatron.config.validators import ConfigError, at_least, choice

TeacherSource = Literal["megatron", "vllm"]
TeacherPlacement = Literal["colocated", "separate"]


@dataclass
class TeacherConfig:
    """Where the teacher's log-probs come from."""

    source: TeacherSource = "megatron"
    """Where teacher log-probs come from: "megatron" (frozen GPTModel, same TP/PP) or "vllm" (a vLLM engine)."""
    offload: bool = False
    """GPU only: keep the Megatron teacher's weights in pinned host memory between scoring passes (copied back to
    the GPU for each pass: ~params x 2 bytes / PCIe bandwidth per step). A clear error on CPU."""

    placement: TeacherPlacement = "colocated"
    """"colocated": the Megatron teacher on the learner's ranks with the learner's layout, a vLLM teacher in the
    learner's process. "separate": a teacher pool of its own (docs/large_models.md, "The teacher pool"): a Megatron
    teacher on the last ``teacher.ranks`` ranks of the job with its own TP/PP/EP, a vLLM teacher in engine
    processes of its own (one per learner replica, on GPUs after the learner's and the rollout engines'); the
    learner sends token ids and gets per-token log-probs back, and in async mode the pool scores the next batch
    while the learner trains."""
    ranks: int = 0
    """Separate Megatron teacher: how many ranks of the job (the last ones; torchrun starts learner + teacher
    ranks) serve the teacher. A multiple of teacher.tensor_parallel x teacher.pipeline_parallel."""
    tensor_parallel: int = 1
    """Separate Megatron teacher: its tensor-parallel size (within a node)."""
    pipeline_parallel: int = 1
    """Separate Megatron teacher: its pipeline-parallel size (uneven stages: parallel.teacher_first_stage_layers
    / teacher_last_stage_layers)."""
    expert_parallel: int = 1
    """Separate Megatron teacher (MoE): its expert-parallel size, dividing teacher.ranks / pipeline_parallel."""

    def validate(self) -> None:
        choice("teacher.source", self.source, TeacherSource)
        choice("teacher.placement", self.placement, TeacherPlacement)
        for key in ("tensor_parallel", "pipeline_parallel", "expert_parallel"):
            at_least(f"teacher.{key}", getattr(self, key), 1)
        at_least("teacher.ranks", self.ranks, 0)
        pool = self.placement == "separate" and self.source == "megatron"
        if not pool and (self.ranks or (self.tensor_parallel, self.pipeline_parallel, self.expert_parallel)
                         != (1, 1, 1)):
            raise ConfigError("teacher.ranks / tensor_parallel / pipeline_parallel / expert_parallel lay out a "
                              "Megatron teacher pool of its own: set teacher.placement=separate and "
                              "teacher.source=megatron, or leave them at their defaults (0, 1, 1, 1)")
        if pool:
            replica = self.tensor_parallel * self.pipeline_parallel
            if self.ranks < 1 or self.ranks % replica:
                raise ConfigError(f"teacher.placement=separate with teacher.source=megatron needs teacher.ranks "
                                  f"(the job's last ranks that serve the teacher), a positive multiple of "
                                  f"teacher.tensor_parallel x teacher.pipeline_parallel = {replica}; got "
                                  f"teacher.ranks={self.ranks}")
            if (self.ranks // self.pipeline_parallel) % self.expert_parallel:
                raise ConfigError(f"teacher.expert_parallel={self.expert_parallel} must divide teacher.ranks / "
                                  f"teacher.pipeline_parallel = {self.ranks // self.pipeline_parallel}")
