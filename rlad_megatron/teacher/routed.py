"""Several teachers, each scoring the responses of the prompts routed to it (``teacher.teachers``): the batch's
``teacher_index`` (set from the routing rule, :mod:`rlad_megatron.teacher.routing`) picks the rows each teacher
scores; every teacher scores only its own rows (a sub-batch per teacher, not every row with every teacher), and
the log-probs come back in the batch's row order.

Every rank of a model-parallel group holds the same batch, so every rank skips the same teachers (those with no
rows) and the collectives of each teacher's forward match.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.teacher.base import Teacher


class RoutedTeachers(Teacher):
    """``teachers[i]`` scores the rows with ``batch.teacher_index == i``; ``names[i]`` is its name."""

    def __init__(self, teachers: Sequence[Teacher], names: Sequence[str]) -> None:
        if len(teachers) != len(names) or not teachers:
            raise ValueError("RoutedTeachers: give one name per teacher, and at least one teacher")
        self.teachers, self.names = list(teachers), list(names)

    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        if batch.teacher_index is None:
            raise ValueError("RoutedTeachers: the batch carries no teacher_index (the rollouts were not routed)")
        out: torch.Tensor | None = None
        for i, teacher in enumerate(self.teachers):
            rows = (batch.teacher_index == i).nonzero().flatten()
            if rows.numel() == 0:
                continue
            scored = teacher.token_logprobs(batch.select(rows))
            if scored is None:  # not the last pipeline stage
                continue
            if out is None:
                out = torch.zeros(batch.loss_mask.shape, dtype=scored.dtype, device=scored.device)
            out[rows.to(scored.device)] = scored
        return out

    def close(self) -> None:
        for teacher in self.teachers:
            teacher.close()
