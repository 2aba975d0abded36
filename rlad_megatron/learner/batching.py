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
    def for_training(cls, trainer) -> "MicroBatching":
        """The training passes' batching from a ``TrainerConfig``."""
        return cls(trainer.micro_batch_size, trainer.max_tokens_per_micro_batch, trainer.sequence_packing)

    @classmethod
    def for_forward(cls, trainer) -> "MicroBatching":
        """The forward-only passes' batching (teacher, old and reference log-probs): the forward budget, or twice
        the training budget when only that is set (no activations are kept for a backward)."""
        budget = trainer.max_tokens_per_forward_micro_batch
        if budget is None and trainer.max_tokens_per_micro_batch is not None:
            budget = 2 * trainer.max_tokens_per_micro_batch
        return cls(trainer.micro_batch_size, budget, trainer.sequence_packing and budget is not None)


def as_micro_batching(value: "int | MicroBatching") -> MicroBatching:
    """An ``int`` is the fixed layout's micro-batch size (the policy's historical argument)."""
    if isinstance(value, MicroBatching):
        return value
    return MicroBatching(micro_batch_size=int(value))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclasses.dataclass
class MicroBatch:
    """One micro-batch as the model sees it, and how its outputs map back to its sequences.

    tokens / position_ids: ``[R, W]`` long; attention_mask: ``[1, 1, W, W]`` bool (True = masked) or None (THD).
    sequences: the micro-batch's ``n`` sequences in the right-padded layout, per-token tensors ``[n, T]``.
    rows: ``[n]`` long, the sequences' rows in the batch the micro-batch was cut from.
    gather_rows / gather_cols: ``[n, T]`` long (packed layouts), where sequence ``j``'s ``t``-th per-token value
    sits in the model's ``[R, W-1]`` output; None when the output already is ``[n, T]``-shaped (``R = n``).
    valid: ``[n, T]`` bool, True where ``t < length_j - 1`` (a real prediction of the sequence's own next token).
    packed_seq_params: Megatron's ``PackedSeqParams`` for THD attention, else None.
    """

    tokens: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    sequences: SequenceBatch
    rows: torch.Tensor
    valid: torch.Tensor
    gather_rows: torch.Tensor | None = None
    gather_cols: torch.Tensor | None = None
    packed_seq_params: object | None = None

    def __len__(self) -> int:
        """Number of sequences (0 for a filler micro-batch)."""
        return int(self.rows.numel())

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """``[R, W-1, ...]`` per-position values of the model -> ``[n, T, ...]`` per sequence (keeps autograd).
        Positions past a sequence's end hold unspecified values (``valid`` is False there)."""
        if self.gather_rows is None:  # rows past the sequences: expert-parallel padding (learner/expert_parallel.py)
            return values[: len(self), : self.valid.shape[1]]
        return values[self.gather_rows, self.gather_cols]

    def to(self, device: torch.device | str) -> "MicroBatch":
        """Every tensor on ``device`` (one call per micro-batch in the forward step)."""
        def move(x):
            return None if x is None else x.to(device)

        params = self.packed_seq_params
        if params is not None:
            params = dataclasses.replace(params, **{
                f.name: getattr(params, f.name).to(device) for f in dataclasses.fields(params)
                if isinstance(getattr(params, f.name), torch.Tensor)
            })
        return MicroBatch(tokens=move(self.tokens), position_ids=move(self.position_ids),
                          attention_mask=move(self.attention_mask), sequences=self.sequences.to(device),
                          rows=move(self.rows), valid=move(self.valid), gather_rows=move(self.gather_rows),
                          gather_cols=move(self.gather_cols), packed_seq_params=params)


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
            width = _round_up(max(int(lengths[i]), 2), multiple)  # descending: the first is the widest
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
def _fit_width(t: torch.Tensor, width: int, fill) -> torch.Tensor:
    """``t[:, :width]``, right-padded with ``fill`` when it is narrower."""
    if t.shape[1] >= width:
        return t[:, :width]
    pad = torch.full((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def _sequences(batch: SequenceBatch, index: torch.Tensor, per_token_width: int) -> SequenceBatch:
    """Rows ``index`` of ``batch`` with every per-token tensor cut (or padded) to ``per_token_width`` columns."""
    sub = batch.select(index)
    values = {}
    for f in dataclasses.fields(sub):
        value = getattr(sub, f.name)
        if f.name == "tokens":
            value = _fit_width(value, per_token_width + 1, 0)
        elif value is not None and value.dim() == 2:  # per-token tensors [n, L-1]
            value = _fit_width(value, per_token_width, False if value.dtype == torch.bool else 0)
        values[f.name] = value
    return SequenceBatch(**values)


def causal_mask(width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[1, 1, W, W]`` bool, True above the diagonal (masked): Megatron's convention."""
    return torch.ones(1, 1, width, width, dtype=torch.bool, device=device).triu(diagonal=1)


def _valid(lengths: torch.Tensor, per_token_width: int) -> torch.Tensor:
    return torch.arange(per_token_width).unsqueeze(0) < (lengths - 1).unsqueeze(1)


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
        width = _round_up(max(int(lengths[rows].max()), 2), multiple)
        sub = _sequences(batch, rows, width - 1)
        positions = torch.arange(width).unsqueeze(0).expand(len(rows), -1)
        out.append(MicroBatch(tokens=sub.tokens, position_ids=positions, attention_mask=causal_mask(width),
                              sequences=sub, rows=rows, valid=_valid(lengths[rows], width - 1)))
    return out


def packed_micro_batches(batch: SequenceBatch, max_tokens: int, multiple: int = 1, *,
                         thd: bool = False) -> list[MicroBatch]:
    """The packed layout: one row per micro-batch, its sequences back to back (see :mod:`.packing`)."""
    from rlad_megatron.learner.packing import pack_row

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
    width = _round_up(2, multiple)
    empty = torch.zeros(0, dtype=torch.long)
    return MicroBatch(tokens=torch.zeros(1, width, dtype=torch.long),
                      position_ids=torch.arange(width).unsqueeze(0), attention_mask=causal_mask(width),
                      sequences=_sequences(batch, empty, width - 1), rows=empty,
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
