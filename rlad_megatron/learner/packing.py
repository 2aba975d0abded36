"""Sequence packing: several sequences back to back in one row, each attending only to itself.

Two forms of the same row:

- without Transformer Engine (CPU, the local layer spec): a block-diagonal causal mask ``[1, 1, W, W]`` (True =
  masked, Megatron's convention, which its torch softmax path takes as given) and position ids restarting at 0
  for every sequence. Megatron's RoPE rotates by the row position, not by the position ids, but attention scores
  under RoPE depend only on the difference of two positions, which is the same inside a block: the result equals
  the unpacked one up to float rounding of the larger rotation angles. This form is the test oracle of packing.
- with Transformer Engine: THD format, no mask, ``PackedSeqParams(qkv_format="thd", cu_seqlens...)``; TE's
  attention and RoPE restart at every boundary. The row's tail padding (to a multiple of the TP size under
  sequence parallelism) is a segment of its own.

Sequence ``j`` at offset ``o_j`` with length ``n_j``: the model's output at row position ``o_j + t`` predicts row
token ``o_j + t + 1`` = the sequence's token ``t + 1``, for ``t < n_j - 1``; that is its per-token index ``t``.
"""
from __future__ import annotations

import torch

from rlad_megatron.learner.micro_batch import MicroBatch, round_up, sequences_at, valid_positions
from rlad_megatron.learner.sequences import SequenceBatch


def segment_ids(lengths: list[int], width: int) -> torch.Tensor:
    """``[W]`` long: which sequence each row position belongs to (the tail padding is one more segment)."""
    ids = torch.full((width,), len(lengths), dtype=torch.long)
    start = 0
    for j, n in enumerate(lengths):
        ids[start:start + n] = j
        start += n
    return ids


def block_causal_mask(lengths: list[int], width: int) -> torch.Tensor:
    """``[1, 1, W, W]`` bool, True = masked: position ``q`` sees ``k <= q`` of its own segment only."""
    seg = segment_ids(lengths, width)
    same = seg.unsqueeze(0) == seg.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return ~(same & causal).view(1, 1, width, width)


def restarting_positions(lengths: list[int], width: int) -> torch.Tensor:
    """``[1, W]`` long: 0, 1, ... within every sequence (and within the tail padding)."""
    pos = torch.empty(width, dtype=torch.long)
    start = 0
    for n in list(lengths) + [width - sum(lengths)]:
        pos[start:start + n] = torch.arange(n)
        start += n
    return pos.unsqueeze(0)


def thd_params(lengths: list[int], width: int):
    """Megatron's ``PackedSeqParams`` for THD attention over one packed row of ``width`` tokens."""
    from megatron.core.packed_seq_params import PackedSeqParams  # lazy: megatron-core is heavy (seconds)

    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    if bounds[-1] < width:  # the tail padding attends to itself only
        bounds.append(width)
    cu = torch.tensor(bounds, dtype=torch.int32)
    longest = int(max(b - a for a, b in zip(bounds, bounds[1:])))
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                           cu_seqlens_kv_padded=cu, max_seqlen_q=longest, max_seqlen_kv=longest)


def pack_row(batch: SequenceBatch, rows: torch.Tensor, lengths: torch.Tensor, multiple: int = 1, *,
             thd: bool = False) -> MicroBatch:
    """Sequences ``rows`` of ``batch`` packed into one row (in the given order)."""
    lens = [max(int(lengths[i]), 1) for i in rows.tolist()]
    width = round_up(max(sum(lens), 2), multiple)
    per_token = max(max(lens) - 1, 1)
    tokens = torch.zeros(1, width, dtype=torch.long)
    offsets = []
    start = 0
    for i, n in zip(rows.tolist(), lens):
        tokens[0, start:start + n] = batch.tokens[i, :n]
        offsets.append(start)
        start += n
    t = torch.arange(per_token).unsqueeze(0)
    seq_len = torch.tensor(lens).unsqueeze(1)
    # past a sequence's end, point at its own first position (unspecified values, ``valid`` False there)
    cols = torch.tensor(offsets).unsqueeze(1) + torch.where(t < seq_len - 1, t, torch.zeros_like(t))
    return MicroBatch(
        tokens=tokens,
        position_ids=restarting_positions(lens, width),
        attention_mask=None if thd else block_causal_mask(lens, width),
        sequences=sequences_at(batch, rows, per_token),
        rows=rows,
        valid=valid_positions(torch.tensor(lens), per_token),
        gather_rows=torch.zeros(len(lens), per_token, dtype=torch.long),
        gather_cols=cols,
        packed_seq_params=thd_params(lens, width) if thd else None,
    )
