"""How a batch of sequences becomes the micro-batches that go through Megatron's schedule.

Three ways, chosen by :class:`MicroBatching`:

- fixed (today's default, ``max_tokens=None``): ``micro_batch_size`` consecutive rows, all as wide as the batch;
- token budget (``max_tokens``): sequences sorted by length (longest first) and cut greedily so that
  ``rows x padded width <= max_tokens``; each micro-batch is padded only to its own longest sequence;
- packed (``max_tokens`` and ``packing``): sequences placed first-fit-decreasing into rows of at most
  ``max_tokens`` tokens, one row per micro-batch, with per-sequence boundaries (a block-diagonal causal mask and
  position ids restarting per sequence; with Transformer Engine, THD ``cu_seqlens`` instead, see
  :mod:`rlad_megatron.learner.packing`).

A single sequence longer than the budget is never split across micro-batches (context parallelism splits rows
across GPUs, inside the forward step): it gets a micro-batch (or packed row) of its own, wider than the budget.
Size the budget to at least the longest prompt + response to keep the memory bound.

Whatever the layout, the loss sees each micro-batch as its own sequences in the usual right-padded ``[n, T]``
per-token layout (:attr:`MicroBatch.sequences`, with :meth:`MicroBatch.unpack` taking the model's per-position
values back to it), so every per-token tensor (engine, old, teacher and reference log-probs, loss mask) stays
aligned to its token, and the loss code is the same for every layout.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

from rlad_megatron.config import TrainerConfig
from rlad_megatron.learner.micro_batch import (  # noqa: F401 (MicroBatch, causal_mask: part of this module's interface)
    MicroBatch, causal_mask, round_up, sequences_at, valid_positions,
)
from rlad_megatron.learner.packing import pack_row
from rlad_megatron.learner.sequences import SequenceBatch


@dataclasses.dataclass(frozen=True)
class MicroBatching:
    """How to cut a batch into micro-batches (see the module docstring)."""

    micro_batch_size: int = 8
    """Rows per micro-batch of the fixed layout (used when ``max_tokens`` is None)."""
    max_tokens: int | None = None
    """Token budget of one micro-batch (rows x padded width, or one packed row's length); None: fixed layout."""
    packing: bool = False
    """Several sequences per row (needs ``max_tokens``)."""
    length_multiple: int = 1
    """Padded widths are rounded up to this (sequence parallelism needs a multiple of the TP size)."""

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")
        if self.packing and self.max_tokens is None:
            raise ValueError("packing needs max_tokens (the length of a packed row)")
        if self.length_multiple < 1:
            raise ValueError(f"length_multiple must be >= 1, got {self.length_multiple}")

    @property
    def fixed(self) -> bool:
        return self.max_tokens is None

    def with_length_multiple(self, multiple: int) -> "MicroBatching":
        """The same batching with widths rounded to a multiple of both the current multiple and ``multiple``."""
        return dataclasses.replace(self, length_multiple=math.lcm(self.length_multiple, max(1, multiple)))

    @classmethod
    def for_training(cls, trainer: TrainerConfig) -> "MicroBatching":
        """The training passes' batching from a ``TrainerConfig``."""
        return cls(trainer.micro_batch_size, trainer.max_tokens_per_micro_batch, trainer.sequence_packing)

    @classmethod
    def for_forward(cls, trainer: TrainerConfig) -> "MicroBatching":
        """The forward-only passes' batching (teacher, old and reference log-probs): the forward token budget
        (:meth:`TrainerConfig.forward_tokens_per_micro_batch`)."""
        budget = trainer.forward_tokens_per_micro_batch()
        return cls(trainer.micro_batch_size, budget, trainer.sequence_packing and budget is not None)


def as_micro_batching(value: "int | MicroBatching") -> MicroBatching:
    """An ``int`` is the fixed layout's micro-batch size (the policy's historical argument)."""
    if isinstance(value, MicroBatching):
        return value
    return MicroBatching(micro_batch_size=int(value))


# ------------------------------------------------------------------------------------------------- planning
def plan_padded(lengths: Sequence[int], max_tokens: int, multiple: int = 1) -> list[list[int]]:
    """Indices of each micro-batch of the token-budget layout: longest first, greedily while
    ``rows x round_up(longest, multiple) <= max_tokens`` (a sequence over the budget alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    groups: list[list[int]] = []
    width = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * width <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
            width = round_up(max(int(lengths[i]), 2), multiple)  # descending: the first is the widest
    return groups


def plan_packed(lengths: Sequence[int], max_tokens: int, multiple: int = 1) -> list[list[int]]:
    """Indices of each packed row: first-fit decreasing into rows of at most ``max_tokens`` tokens (rounded down
    to ``multiple``; a sequence over that gets a row of its own)."""
    capacity = max(max_tokens // multiple * multiple, 1)
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = max(int(lengths[i]), 1)
        for r, u in enumerate(used):
            if u + n <= capacity:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    for row in rows:
        row.sort()  # inside a row, keep the batch's order (any order is exact; this one is easy to read)
    return rows


# ------------------------------------------------------------------------------------------------- building
def fixed_micro_batches(batch: SequenceBatch, micro_batch_size: int) -> list[MicroBatch]:
    """Today's layout: consecutive rows, all ``L`` wide (``len(batch)`` must be a multiple of the size)."""
    n, length = len(batch), batch.tokens.shape[1]
    if n % micro_batch_size:
        raise ValueError(
            f"batch of {n} sequences does not split into micro-batches of {micro_batch_size}: make the "
            "per-rank batch a multiple of trainer.micro_batch_size"
        )
    out = []
    for start in range(0, n, micro_batch_size):
        rows = torch.arange(start, start + micro_batch_size)
        sub = batch.select(slice(start, start + micro_batch_size))
        positions = torch.arange(length).unsqueeze(0).expand(len(rows), -1)
        out.append(MicroBatch(tokens=sub.tokens, position_ids=positions, attention_mask=causal_mask(length),
                              sequences=sub, rows=rows, valid=torch.ones(len(rows), length - 1, dtype=torch.bool)))
    return out


def padded_micro_batches(batch: SequenceBatch, max_tokens: int, multiple: int = 1) -> list[MicroBatch]:
    """The token-budget layout: each micro-batch right-padded to its own longest sequence."""
    lengths = batch.sequence_lengths()
    out = []
    for group in plan_padded(lengths.tolist(), max_tokens, multiple):
        rows = torch.tensor(group, dtype=torch.long)
        width = round_up(max(int(lengths[rows].max()), 2), multiple)
        sub = sequences_at(batch, rows, width - 1)
        positions = torch.arange(width).unsqueeze(0).expand(len(rows), -1)
        out.append(MicroBatch(tokens=sub.tokens, position_ids=positions, attention_mask=causal_mask(width),
                              sequences=sub, rows=rows, valid=valid_positions(lengths[rows], width - 1)))
    return out


def packed_micro_batches(batch: SequenceBatch, max_tokens: int, multiple: int = 1, *,
                         thd: bool = False) -> list[MicroBatch]:
    """The packed layout: one row per micro-batch, its sequences back to back (see :mod:`.packing`)."""
    lengths = batch.sequence_lengths()
    return [pack_row(batch, torch.tensor(group, dtype=torch.long), lengths, multiple, thd=thd)
            for group in plan_packed(lengths.tolist(), max_tokens, multiple)]


def build_micro_batches(batch: SequenceBatch, batching: MicroBatching, *, thd: bool = False) -> list[MicroBatch]:
    """``batch`` cut as ``batching`` says (``thd``: packed rows carry ``PackedSeqParams`` instead of a mask)."""
    if batching.fixed:
        return fixed_micro_batches(batch, batching.micro_batch_size)
    if batching.packing:
        return packed_micro_batches(batch, batching.max_tokens, batching.length_multiple, thd=thd)
    return padded_micro_batches(batch, batching.max_tokens, batching.length_multiple)


def filler_micro_batch(batch: SequenceBatch, multiple: int = 1) -> MicroBatch:
    """A micro-batch with no sequence (one short row of token 0), run so that every rank executes the same
    number of micro-batches; its loss is exactly zero."""
    width = round_up(2, multiple)
    empty = torch.zeros(0, dtype=torch.long)
    return MicroBatch(tokens=torch.zeros(1, width, dtype=torch.long),
                      position_ids=torch.arange(width).unsqueeze(0), attention_mask=causal_mask(width),
                      sequences=sequences_at(batch, empty, width - 1), rows=empty,
                      valid=torch.zeros(0, width - 1, dtype=torch.bool))


def scatter_token_values(parts: Sequence[tuple[MicroBatch, torch.Tensor]], batch_size: int,
                         per_token_width: int) -> torch.Tensor:
    """``[B, L-1]``: each micro-batch's ``[n, T]`` values put back at its sequences' rows (0 where a position is
    past its sequence's end, or where no micro-batch wrote)."""
    if not parts:
        return torch.zeros(batch_size, per_token_width)
    first = parts[0][1]
    out = torch.zeros(batch_size, per_token_width, dtype=first.dtype, device=first.device)
    for mb, values in parts:
        if len(mb) == 0:
            continue
        width = min(values.shape[1], per_token_width)
        kept = torch.where(mb.valid.to(values.device), values, torch.zeros((), dtype=values.dtype,
                                                                           device=values.device))
        out[mb.rows.to(values.device), :width] = kept[:, :width]
    return out
