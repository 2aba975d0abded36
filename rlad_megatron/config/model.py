"""``model``: the student's and the teacher's Hugging Face folders and the learner's parameter dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlad_megatron.config.validators import ConfigError, choice

DType = Literal["float32", "bfloat16"]


@dataclass
class ModelConfig:
    """The student and teacher checkpoints."""

    student: str = ""
    """Hugging Face directory of the student (config.json, safetensors, tokenizer): the initial weights."""
    teacher: str | None = None
    """Hugging Face directory of the teacher; required by ``rlad`` and ``kdrl`` (and by ``sft`` to generate)."""
    params_dtype: DType = "float32"
    """Learner parameter dtype: "float32" or "bfloat16"."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint folder (off: only the built-in Llama/Qwen families load)."""

    def validate(self) -> None:
        if not self.student:
            raise ConfigError("model.student: give the student's Hugging Face directory")
        choice("model.params_dtype", self.params_dtype, DType)
