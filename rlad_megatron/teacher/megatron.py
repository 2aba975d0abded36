"""A teacher that is a frozen Megatron GPTModel with the learner's TP/PP layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlad_megatron.learner.batching import MicroBatching
from rlad_megatron.learner.policy import MegatronPolicy
from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.teacher.base import Teacher


class MegatronTeacher(Teacher):
    """Scores with ``policy`` (frozen chunks) in micro-batches through Megatron's schedule: ``micro_batch_size``
    sequences each, or a :class:`MicroBatching` (forward token budget, packing)."""

    def __init__(self, policy: MegatronPolicy, micro_batch_size: "int | MicroBatching") -> None:
        self.policy = policy
        self.micro_batch_size = micro_batch_size

    @classmethod
    def load(cls, hf_dir: str | Path, *, micro_batch_size: "int | MicroBatching", params_dtype: torch.dtype,
             student_dir: str | Path | None = None, **model_overrides: Any) -> "MegatronTeacher":
        """This rank's shard of the Hugging Face model in ``hf_dir``, frozen. With ``student_dir``, the tokenizers
        are checked to be compatible first. ``model_overrides`` go to the model's ``TransformerConfig``
        (``sequence_parallel``, uneven pipeline stages, ...)."""
        from rlad_megatron.models import load_teacher

        chunks, arch = load_teacher(hf_dir, student_dir=student_dir, params_dtype=params_dtype, **model_overrides)
        return cls(MegatronPolicy(chunks, arch.vocab_size), micro_batch_size)

    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        return self.policy.token_logprobs(batch, self.micro_batch_size)
