"""The run configuration: one small dataclass per section, a YAML file, and dotted command-line overrides.

    config = load_run_config("configs/quickstart.yaml", ["loss.alpha=0.3", "trainer.steps=20"])

Defaults live only in the section dataclasses (one module each in this package). An unknown key, a value of the wrong
type or an invalid value is a ``ConfigError`` that names the dotted key and says what is accepted (parsing:
:mod:`rlad_megatron.config.parsing`; checks: :mod:`rlad_megatron.config.validators`). Validation is pure: it
probes no hardware and imports no heavy library (the trainer's ``check_run`` looks at the machine and the files).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rlad_megatron.config.data import DataConfig
from rlad_megatron.config.paths import resolve_paths
from rlad_megatron.config.fp8 import FP8Settings
from rlad_megatron.config.loss import LossConfig, required_inputs
from rlad_megatron.config.model import ModelConfig
from rlad_megatron.config.optim import OptimConfig
from rlad_megatron.config.parallel import ParallelConfig
from rlad_megatron.config.parsing import apply_overrides, build_dataclass
from rlad_megatron.config.rollout import RolloutConfig
from rlad_megatron.config.teacher import TeacherConfig, TeacherModel
from rlad_megatron.config.trainer import TrainerConfig
from rlad_megatron.config.validators import ConfigError


@dataclass
class RunConfig:
    """A whole run: one section per component."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    fp8: FP8Settings = field(default_factory=FP8Settings)

    def validate(self) -> "RunConfig":
        """Every section, then the rules across sections; raises ``ConfigError`` naming the dotted key."""
        self.model.validate()
        self.parallel.validate()
        self.rollout.validate()
        self.data.validate()
        self.optim.validate()
        self.loss.validate("loss")
        self.trainer.validate()
        self.teacher.validate()
        validate_several_teachers(self)
        if teacher_use(self.loss) != "none" and not self.model.teacher and not self.teacher.several():
            raise ConfigError(f"loss.algorithm={self.loss.algorithm!r} needs model.teacher (a HF directory)")
        if self.rollout.group_size == 1 and self.loss.learns_only_from_group_advantages():
            raise ConfigError(
                f"rollout.group_size=1 with loss.algorithm={self.loss.algorithm}: its advantages are relative to the "
                "group of responses to one prompt (reward minus the group's mean), so with one response per prompt "
                "every advantage is 0 and the run learns nothing: set rollout.group_size to 2 or more (8 in the "
                "paper)")
        validate_fp8_run(self)
        validate_teacher_placement(self)
        return self


TeacherUse = typing.Literal["logprobs", "samples", "none"]


def teacher_use(loss: LossConfig) -> TeacherUse:
    """What a run needs its teacher for (the one place of this rule):

    - "logprobs": the loss takes the teacher's per-token log-probs of the student's samples (``teacher_logprobs`` in
      :func:`rlad_megatron.loss.required_inputs`: rlad, kdrl), or its top-k (``teacher_topk_logprobs``);
    - "samples": offline distillation (sft) trains on the teacher's own samples: the rollout engine serves the
      teacher and receives no weight syncs;
    - "none": grpo.
    """
    if required_inputs(loss) & {"teacher_logprobs", "teacher_topk_logprobs"}:
        return "logprobs"
    return "samples" if loss.algorithm == "sft" else "none"


def teacher_models(config: RunConfig) -> list[tuple[str, TeacherModel]]:
    """The run's scoring teachers as (the config key of its folder, its entry) (the one place of this rule): those of
    ``teacher.teachers``, or the one teacher of ``model.teacher`` / ``teacher.source`` (named "teacher", weight 1);
    [] when the loss takes no teacher log-probs."""
    if teacher_use(config.loss) != "logprobs":
        return []
    if config.teacher.several():
        return [(f"teacher.teachers[{i}].model", t) for i, t in enumerate(config.teacher.teachers)]
    return [("model.teacher", TeacherModel(name="teacher", model=str(config.model.teacher or ""),
                                           source=config.teacher.source))]


def validate_several_teachers(config: RunConfig) -> None:
    """``teacher.teachers`` against the loss and ``model.teacher``; raises ``ConfigError``."""
    if not config.teacher.several():
        return
    if teacher_use(config.loss) != "logprobs":
        raise ConfigError(f"teacher.teachers: loss.algorithm={config.loss.algorithm!r} takes no teacher log-probs "
                          "per response; several teachers are for rlad and kdrl (leave teacher.teachers empty)")
    if config.model.teacher:
        raise ConfigError(f"model.teacher={config.model.teacher} with teacher.teachers: give every teacher in "
                          "teacher.teachers (each with its model) and leave model.teacher unset")
    if required_inputs(config.loss) & {"teacher_topk_logprobs"}:
        raise ConfigError("teacher.teachers with top-k teacher terms (loss.topk_beta / loss.kd_estimator=topk): "
                          "not supported yet; use one teacher")


def megatron_teacher(config: RunConfig) -> bool:
    """Whether the run loads its teacher as a frozen Megatron GPTModel in the learner's processes (the one place
    of this rule): the loss takes teacher log-probs, ``teacher.source`` is "megatron" and the teacher is not in a
    pool of its own. Such a teacher is laid out like the student (TP/PP/EP), counted in the memory plan and split
    by expert parallelism; a vLLM teacher is a scoring engine instead, a teacher pool has ranks and a layout of its
    own (:func:`teacher_pool`)."""
    return (teacher_use(config.loss) == "logprobs" and config.teacher.source == "megatron"
            and config.teacher.placement == "colocated" and not config.teacher.several())


TeacherPool = typing.Literal["none", "megatron", "vllm"]


def teacher_pool(config: RunConfig) -> TeacherPool:
    """Which teacher pool of its own the run has (the one place of this rule): "megatron" (teacher ranks of the
    job), "vllm" (teacher engine processes), or "none" (the teacher, if any, lives with the learner)."""
    if config.teacher.placement != "separate" or teacher_use(config.loss) != "logprobs":
        return "none"
    return "megatron" if config.teacher.source == "megatron" else "vllm"


def validate_teacher_placement(config: RunConfig) -> None:
    """``teacher.placement`` against the loss and the rollout placement; raises ``ConfigError``."""
    t = config.teacher
    if t.placement == "separate" and teacher_use(config.loss) != "logprobs":
        raise ConfigError(f"teacher.placement=separate puts a scoring teacher in a pool of its own, but "
                          f"loss.algorithm={config.loss.algorithm!r} takes no teacher log-probs: set "
                          "teacher.placement=colocated")
    vllm = [key for key, m in teacher_models(config) if m.source == "vllm"]
    if vllm and t.placement == "colocated" and config.rollout.placement == "disaggregated":
        what = "teacher.source=vllm" if not t.several() else f"{vllm[0].removesuffix('.model')}.source=vllm"
        raise ConfigError(f"{what} with rollout.placement=disaggregated: a colocated vLLM teacher would "
                          "be a one-rank engine inside the learner's process (refused off LOCAL_RANK 0, and next to "
                          "the learner vLLM's start-up check of free GPU memory fails); set " + (
                              "teacher.placement=separate (the teacher in engine processes of its own, like the "
                              "rollout engines)" if not t.several() else
                              "its source to megatron, or rollout.placement=colocated"))


def validate_fp8_run(config: RunConfig) -> None:
    """Cross-section checks for FP8 in a whole run (no hardware needed); raises ``ConfigError``.

    - FP8 parameters need bfloat16 model parameters and the distributed optimizer (megatron-core keeps the
      high-precision main copy in the optimizer's shards and re-quantizes after each step).
    - FP8 rollouts need a bfloat16 engine and ``rollout.weight_load=vllm_reload``: vLLM quantizes weights once when
      they are loaded, so copying bf16 tensors into its FP8 parameters in place would be wrong; the layerwise reload
      runs vLLM's quantization again on every sync.
    """
    fp8 = config.fp8
    fp8.validate()
    if fp8.fp8_params:
        if config.model.params_dtype != "bfloat16":
            raise ConfigError(f"fp8.fp8_params=true needs model.params_dtype=bfloat16, "
                              f"got {config.model.params_dtype!r}")
        if not config.optim.use_distributed_optimizer:
            raise ConfigError("fp8.fp8_params=true needs optim.use_distributed_optimizer=true "
                              "(the FP8 weights' bf16 main copy lives in the distributed optimizer)")
    if fp8.rollout_fp8:
        if config.rollout.dtype != "bfloat16":
            raise ConfigError(f"fp8.rollout_fp8=true needs rollout.dtype=bfloat16 (vLLM quantizes a bf16 model "
                              f"to FP8), got {config.rollout.dtype!r}")
        if config.rollout.weight_load != "vllm_reload":
            raise ConfigError("fp8.rollout_fp8=true needs rollout.weight_load=vllm_reload: an FP8 engine must "
                              "re-quantize synced weights, which the in-place copy does not do")


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return build_dataclass(RunConfig, data).validate()


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; give the YAML file itself")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}); give a YAML file") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err)
            context = getattr(err, "context", None)
            raise ConfigError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        data = loaded or {}
    config = build_dataclass(RunConfig, apply_overrides(data, list(overrides or [])))
    return resolve_paths(config, Path(path).parent if path is not None else None, overrides or (),
                         written=data).validate()


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
