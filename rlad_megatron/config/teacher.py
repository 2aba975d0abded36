"""``teacher``: where the teacher's log-probs come from, and whether the Megatron teacher waits in host memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlad_megatron.config.validators import choice

TeacherSource = Literal["megatron", "vllm"]


@dataclass
class TeacherConfig:
    """Where the teacher's log-probs come from."""

    source: TeacherSource = "megatron"
    """Where teacher log-probs come from: "megatron" (frozen GPTModel, same TP/PP) or "vllm" (a vLLM engine)."""
    offload: bool = False
    """GPU only: keep the Megatron teacher's weights in pinned host memory between scoring passes (copied back to
    the GPU for each pass: ~params x 2 bytes / PCIe bandwidth per step). A clear error on CPU."""

    def validate(self) -> None:
        choice("teacher.source", self.source, TeacherSource)
