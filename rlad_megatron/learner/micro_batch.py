"""One micro-batch as the model sees it (:class:`MicroBatch`) and the helpers every layout builds it with: the
padded layouts here and in :mod:`rlad_megatron.learner.batching`, packed rows in :mod:`rlad_megatron.learner.packing`.
"""
from __future__ import annotations

import dataclasses

import torch

from rlad_megatron.learner.sequences import SequenceBatch


def round_up(value: int, multiple: int) -> int:
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

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`unpack` for inputs: ``[n, T, ...]`` per-sequence values -> ``[R, W-1, ...]`` at the
        model's positions (e.g. token ids the model is asked about per position). Positions no sequence owns (past
        an end, between packed sequences, padding rows) hold 0."""
        out = values.new_zeros((int(self.tokens.shape[0]), self.width - 1) + tuple(values.shape[2:]))
        if len(self) == 0:
            return out
        if self.gather_rows is None:
            width = min(values.shape[1], out.shape[1])
            out[: len(self), :width] = values[:, :width]
            return out
        valid = self.valid.to(values.device)
        out[self.gather_rows[valid], self.gather_cols[valid]] = values[:, : valid.shape[1]][valid]
        return out

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


def fit_width(t: torch.Tensor, width: int, fill) -> torch.Tensor:
    """``t[:, :width]``, right-padded with ``fill`` when it is narrower."""
    if t.shape[1] >= width:
        return t[:, :width]
    pad = torch.full((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]), fill, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def sequences_at(batch: SequenceBatch, index: torch.Tensor, per_token_width: int) -> SequenceBatch:
    """Rows ``index`` of ``batch`` with every per-token tensor cut (or padded) to ``per_token_width`` columns."""
    sub = batch.select(index)
    values = {}
    for f in dataclasses.fields(sub):
        value = getattr(sub, f.name)
        if f.name == "tokens":
            value = fit_width(value, per_token_width + 1, 0)
        elif value is not None and value.dim() >= 2:  # per-token tensors [n, L-1] (top-k: [n, L-1, k])
            value = fit_width(value, per_token_width, False if value.dtype == torch.bool else 0)
        values[f.name] = value
    return SequenceBatch(**values)


def causal_mask(width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[1, 1, W, W]`` bool, True above the diagonal (masked): Megatron's convention."""
    return torch.ones(1, 1, width, width, dtype=torch.bool, device=device).triu(diagonal=1)


def valid_positions(lengths: torch.Tensor, per_token_width: int) -> torch.Tensor:
    """``[n, T]`` bool: True where ``t < length_j - 1`` (a prediction of sequence ``j``'s own next token)."""
    return torch.arange(per_token_width).unsqueeze(0) < (lengths - 1).unsqueeze(1)
