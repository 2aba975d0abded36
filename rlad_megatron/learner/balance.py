"""Balanced data parallelism: a step's sequences re-dealt over the data-parallel ranks by token work.

Each DP rank generates the responses of its own prompts, so with long-tailed lengths one rank can hold several
times the tokens of another, and every rank waits for the slowest. With token-budget micro-batches nothing ties
a sequence to the rank that generated it: the ranks gather the step's sequences (after the advantages, which are
per prompt group, are computed), and each global mini-batch is dealt longest-first to the rank with the least
work so far. Mini-batch membership stays what it was (every ``updates``-th prompt group of every rank, tagged in
``SequenceBatch.mini_batch``), so the global mini-batches, their denominators and the gradient are unchanged; only
which rank computes which sequence moves. Ranks may end up with different numbers of sequences and
micro-batches; the policy pads the micro-batch counts to the maximum (``MegatronPolicy.train_step``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from rlad_megatron.learner.sequences import SequenceBatch


def mini_batch_of_rows(num_rows: int, group_size: int, updates: int) -> torch.Tensor:
    """``[B]`` long: the trainer's mini-batch of each row (every ``updates``-th prompt group)."""
    return (torch.arange(num_rows) // group_size) % updates


def deal_by_work(work: list[int], ranks: int) -> list[list[int]]:
    """Indices per rank: longest first, each to the rank with the least work so far (ties: fewer sequences,
    then the lower rank). Deterministic, so every rank computes the same deal."""
    loads = [(0, 0, r) for r in range(ranks)]
    out: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(work)), key=lambda i: (-int(work[i]), i)):
        load, count, r = min(loads)
        out[r].append(i)
        loads[r] = (load + int(work[i]), count + 1, r)
    for rows in out:
        rows.sort()
    return out


def _to_width(t: torch.Tensor, width: int, fill) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]) + tuple(t.shape[2:]), fill, dtype=t.dtype)
    return torch.cat([t, pad], dim=1)


def concat_batches(parts: list[SequenceBatch], pad_id: int) -> SequenceBatch:
    """Rows of ``parts`` one after the other, right-padded to the widest."""
    width = max(p.tokens.shape[1] for p in parts)
    values = {}
    for f in dataclasses.fields(SequenceBatch):
        items = [getattr(p, f.name) for p in parts]
        if any(v is None for v in items):
            if not all(v is None for v in items):
                raise ValueError(f"concat_batches: {f.name} is set on some parts only")
            values[f.name] = None
            continue
        if f.name == "tokens":
            items = [_to_width(v, width, pad_id) for v in items]
        elif items[0].dim() >= 2:  # per-token tensors [n, L-1] (top-k: [n, L-1, k])
            items = [_to_width(v, width - 1, False if v.dtype == torch.bool else 0) for v in items]
        values[f.name] = torch.cat(items, dim=0)
    return SequenceBatch(**values)


def balance_over_data_parallel(batch: SequenceBatch, *, group_size: int, updates: int, pad_id: int,
                               group=None) -> SequenceBatch:
    """This rank's share of the step's sequences after dealing every global mini-batch by token work (collective
    over the data-parallel ``group``; every rank of it passes its own batch). The result carries ``mini_batch``."""
    ranks = dist.get_world_size(group)
    me = dist.get_rank(group)
    local = dataclasses.replace(batch, mini_batch=mini_batch_of_rows(len(batch), group_size, updates)
                                if batch.mini_batch is None else batch.mini_batch)
    gathered: list = [None] * ranks
    dist.all_gather_object(gathered, dataclasses.replace(local, lengths=local.sequence_lengths()), group=group)
    everything = concat_batches(gathered, pad_id)
    mine: list[int] = []
    for u in range(updates):
        rows = (everything.mini_batch == u).nonzero().flatten()
        work = everything.lengths[rows].tolist()
        mine.extend(rows[i].item() for i in deal_by_work(work, ranks)[me])
    return everything.select(torch.tensor(mine, dtype=torch.long))
