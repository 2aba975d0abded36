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

    def token_topk(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``k`` most likely next tokens at every position, ``(log-probs [B, L-1, k] float32, global ids
        [B, L-1, k])`` sorted by decreasing probability, on the last pipeline stage (None on the others); for
        ``loss.topk_kl``. Every single teacher has it (Megatron, vLLM, pooled); several routed teachers do not, and the
        run config refuses top-k with them, so reaching this is a bug."""
        raise TypeError(f"{type(self).__name__} has no top-k pass (loss.topk_kl); the run config should have refused "
                        "this combination")

    def token_scores(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(token_logprobs, top-k log-probs, top-k ids)`` of ``batch`` (as the two methods above), for a loss that
        takes both; a teacher that can computes them in one pass. None off the last pipeline stage."""
        logprobs, topk = self.token_logprobs(batch), self.token_topk(batch, k)
        return None if topk is None else (logprobs, *topk)

    last_busy_s: float = 0.0
    """A teacher apart: the seconds it computed on the latest batch (the step timeline's teacher busy time)."""
    last_asked_at_arrival: bool = False
    """A teacher apart: whether the latest batch was asked for as soon as its samples arrived
    (:meth:`prefetch_rows`)."""

    @property
    def separate(self) -> bool:
        """Whether the teacher computes apart from the learner (a pool of its own, ``teacher.placement: separate``):
        then :meth:`prefetch` starts its work and the learner computes meanwhile."""
        return False

    def prefetch(self, batch: SequenceBatch) -> None:
        """Ask for ``batch``'s log-probs ahead of :meth:`token_logprobs` (a teacher apart starts scoring now; one
        in the learner's ranks scores when asked: nothing to do here)."""

    def prefetch_rows(self, rows: list[list[int]]) -> None:
        """Ask ahead for the log-probs of these token-id rows (prompt + response, from position 0), as soon as the
        samples exist: in async mode the rollout pipeline calls it on the leader when the engine's batch arrives."""

    def close(self) -> None:
        """Release what the teacher holds (an engine); nothing by default."""
