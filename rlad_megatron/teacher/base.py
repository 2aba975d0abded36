"""The teacher interface: per-token log-probs of a batch of the student's samples under a frozen model."""
from __future__ import annotations

import abc

import torch

from rlad_megatron.learner.sequences import SequenceBatch


class Teacher(abc.ABC):
    """A frozen model that scores sequences. Every rank of the learner calls :meth:`token_logprobs` (it may be
    collective over the model-parallel group)."""

    @abc.abstractmethod
    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        """``[B, L-1]`` float32 log-probs of ``batch.tokens[:, 1:]`` under this model, on the last pipeline stage
        (None on the other stages). Only response positions (``batch.loss_mask``) are meaningful."""

    def close(self) -> None:
        """Release what the teacher holds (an engine); nothing by default."""
