"""``teacher``: where the teacher's log-probs come from, whether the Megatron teacher waits in host memory, whether
it runs in a pool of its own (``placement: separate``, docs/large_models.md), and several teachers with a routing
rule (``teachers``, ``route_field``, ``default``; docs/teacher_signals.md)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from rlad_megatron.config.validators import ConfigError, at_least, choice

TeacherSource = Literal["megatron", "vllm"]
TeacherPlacement = Literal["colocated", "separate"]

#: What a teacher's name may hold: it becomes part of metric names (``teacher/<name>/kl``).
TEACHER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TeacherModel:
    """One of several teachers (``teacher.teachers``)."""

    name: str = ""
    """What the routing field's values call this teacher; also its metrics' name (teacher/<name>/kl). Letters,
    digits, ``_ . -``."""
    model: str = ""
    """Its Hugging Face folder (the student's tokenizer: every teacher scores the student's tokens)."""
    source: TeacherSource = "megatron"
    """"megatron" (a frozen GPTModel with the learner's TP/PP) or "vllm" (a scoring engine), as teacher.source."""
    weight: float = 1.0
    """In [0, 1]: the teacher term's weight on the prompts routed to it (times the trust weight of
    loss.teacher_trust): rlad's per-response alpha is alpha + (1 - alpha)(1 - w), kdrl's penalty is multiplied by w;
    1: as a single teacher."""


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

    teachers: list[TeacherModel] = field(default_factory=list)
    """Several teachers, each prompt scored by one of them (empty: the one teacher of model.teacher and
    teacher.source). Each entry: {name, model, source: megatron|vllm, weight: 0..1}, e.g. [{name: math, model:
    /m/math}, {name: logic, model: /m/logic, weight: 0.5}]. With it leave model.teacher unset; colocated only
    (teacher.placement=colocated); every teacher is loaded (and counted in the memory plan)."""
    route_field: str = ""
    """Several teachers: the record field (a data column, or a data.fields target) whose value names a prompt's
    teacher, e.g. `teacher`, or `task` for rows that carry their task's name; empty: every prompt goes to
    teacher.default."""
    default: str = ""
    """Several teachers: the teacher of prompts without a value in teacher.route_field (empty: such a prompt stops
    the run at its start, naming the file and row)."""

    def several(self) -> bool:
        """Whether the run has several teachers (``teacher.teachers``); otherwise it is the one teacher of
        ``model.teacher`` (the path of a single teacher, unchanged)."""
        return bool(self.teachers)

    def validate(self) -> None:
        choice("teacher.source", self.source, TeacherSource)
        choice("teacher.placement", self.placement, TeacherPlacement)
        self._validate_several()
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

    def _validate_several(self) -> None:
        if not self.teachers:
            if self.route_field or self.default:
                raise ConfigError("teacher.route_field / teacher.default route prompts among several teachers: "
                                  "list them in teacher.teachers, or leave both empty")
            return
        names: list[str] = []
        for i, t in enumerate(self.teachers):
            key = f"teacher.teachers[{i}]"
            if not t.name or not TEACHER_NAME.match(t.name):
                raise ConfigError(f"{key}.name={t.name!r}: give each teacher a name of letters, digits, _ . - "
                                  "(what teacher.route_field's values call it)")
            if t.name in names:
                raise ConfigError(f"{key}.name={t.name!r}: two teachers have this name")
            names.append(t.name)
            if not t.model:
                raise ConfigError(f"{key}.model: give the teacher's Hugging Face folder")
            choice(f"{key}.source", t.source, TeacherSource)
            if not (isinstance(t.weight, (int, float)) and math.isfinite(t.weight) and 0.0 <= t.weight <= 1.0):
                raise ConfigError(f"{key}.weight must be a number in [0, 1], got {t.weight}")
        if self.default and self.default not in names:
            raise ConfigError(f"teacher.default={self.default!r} is not one of teacher.teachers' names {names}")
        if not self.route_field and not self.default:
            raise ConfigError("several teachers (teacher.teachers) need a routing rule: set teacher.route_field (the "
                              "record field naming each prompt's teacher) and/or teacher.default")
        if self.placement != "colocated":
            raise ConfigError("teacher.teachers with teacher.placement=separate: several teachers in pools of their "
                              "own are not supported yet; set teacher.placement=colocated")
