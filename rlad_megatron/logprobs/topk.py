"""Top-k of a vocabulary-sharded distribution (for full-vocabulary KD terms), without gathering the vocabulary.

Each rank takes the top-k of its shard, the ranks exchange those ``k`` candidates (``TP * k`` values per
position), and every rank keeps the best ``k``. The log-probs use the global log-sum-exp of
:func:`rlad_megatron.logprobs.vocab_parallel.row_statistics`. No gradient: to train a student on the
teacher's top-k, feed the returned ids to ``vocab_parallel_token_logprobs(student_logits, ids)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rlad_megatron.logprobs.vocab_parallel import row_statistics, rows_per_chunk, shard_layout


@torch.no_grad()
def vocab_parallel_topk(
    logits: Tensor,
    k: int,
    *,
    tp_group: Any = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most likely tokens of each position's full (sharded) distribution.

    Args:
        logits: ``[..., V/TP]``, this rank's shard in rank order, any float dtype.
        k: how many tokens, ``1 <= k <= vocab_size``.
        tp_group: tensor-parallel group, ``None`` on one device.
        vocab_size: the true vocabulary (later columns are padding and never selected).
        chunk_size: rows per float32 chunk of the log-sum-exp pass.

    Returns:
        ``(logprobs [..., k] float32, ids [..., k] int64 global token ids)``, sorted by decreasing probability,
        identical on every TP rank (the order among exactly tied logits is unspecified).
    """
    local_vocab = logits.shape[-1]
    _, size, start, valid = shard_layout(local_vocab, tp_group, vocab_size)
    true_vocab = local_vocab * size if vocab_size is None else vocab_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= true_vocab:
        raise ValueError(f"k must be an int in [1, {true_vocab}] (the vocabulary size), got {k!r}")
    lead = tuple(logits.shape[:-1])
    x = logits.reshape(-1, local_vocab)
    n = x.shape[0]
    chunk = rows_per_chunk(chunk_size, local_vocab, max(1, n), logits.device)
    lse = row_statistics(x, tp_group, valid, chunk, with_entropy=False).lse

    local_k = min(k, valid)
    values = torch.full((n, k), float("-inf"), dtype=torch.float32, device=x.device)
    ids = torch.zeros((n, k), dtype=torch.int64, device=x.device)
    if local_k > 0:
        v, i = torch.topk(x[:, :valid], local_k, dim=-1)
        values[:, :local_k] = v.float()
        ids[:, :local_k] = i + start
    best, out_ids = merge_topk_candidates(values, ids, k, tp_group)
    return (best - lse.unsqueeze(-1)).reshape(lead + (k,)), out_ids.reshape(lead + (k,))


def merge_topk_candidates(values: Tensor, ids: Tensor, k: int, tp_group: Any) -> tuple[Tensor, Tensor]:
    """Every rank's ``k`` candidates (``values [N, k]`` float32 logits, ``-inf`` where a shard has fewer; ``ids``
    global) -> the best ``k`` of all shards, sorted, identical on every rank (one all-gather of each)."""
    size = 1 if tp_group is None else dist.get_world_size(tp_group)
    if size > 1:
        all_values = [torch.empty_like(values) for _ in range(size)]
        all_ids = [torch.empty_like(ids) for _ in range(size)]
        dist.all_gather(all_values, values, group=tp_group)
        dist.all_gather(all_ids, ids, group=tp_group)
        values = torch.cat(all_values, dim=-1)
        ids = torch.cat(all_ids, dim=-1)
    best, where = torch.topk(values, k, dim=-1)
    return best, ids.gather(-1, where)
