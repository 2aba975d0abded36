"""The run configuration, one package: a dataclass per section (``model``, ``parallel``, ``rollout``, ``data``,
``optim``, ``loss``, ``trainer``, ``teacher``, ``fp8``; one module each), the run that holds them (``run``), the
checks they are written with (``validators``), YAML and dotted-override parsing (``parsing``), the documentation of
every key (``docs``: ``rlad-megatron config --defaults``) and that command (``cli``), relative paths taken from the
config file's folder (``paths``); ``engine`` holds one vLLM engine's settings, derived from ``rollout``.

    from rlad_megatron.config import RunConfig, ConfigError, load_run_config
    config = load_run_config("configs/quickstart.yaml", ["loss.alpha=0.3", "trainer.steps=20"])
"""
from rlad_megatron.config.data import DataConfig
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.config.fp8 import FP8_FORMATS, FP8_RECIPES, FP8Settings
from rlad_megatron.config.loss import LossConfig, required_inputs
from rlad_megatron.config.model import ModelConfig
from rlad_megatron.config.optim import OptimConfig
from rlad_megatron.config.parallel import ParallelConfig
from rlad_megatron.config.parsing import apply_overrides, build_dataclass, flatten_dotted
from rlad_megatron.config.rollout import RolloutConfig
from rlad_megatron.config.run import (
    RunConfig, TeacherPool, TeacherUse, load_run_config, megatron_teacher, run_config_from_dict, run_config_to_dict,
    teacher_models, teacher_pool, teacher_use, validate_fp8_run, validate_teacher_placement,
)
from rlad_megatron.config.teacher import TeacherConfig, TeacherModel
from rlad_megatron.config.trainer import WANDB_MODES, TrainerConfig, WandbConfig
from rlad_megatron.config.validators import ConfigError

__all__ = [
    "FP8_FORMATS", "FP8_RECIPES", "WANDB_MODES", "ConfigError", "DataConfig", "FP8Settings", "LossConfig",
    "ModelConfig", "OptimConfig", "ParallelConfig", "RolloutConfig", "RunConfig", "TeacherConfig", "TeacherModel",
    "TeacherPool",
    "TeacherUse",
    "TrainerConfig", "VLLMEngineConfig", "WandbConfig", "apply_overrides", "build_dataclass", "flatten_dotted",
    "load_run_config", "megatron_teacher", "required_inputs", "run_config_from_dict", "run_config_to_dict",
    "teacher_models", "teacher_pool", "teacher_use", "validate_fp8_run", "validate_teacher_placement",
]
