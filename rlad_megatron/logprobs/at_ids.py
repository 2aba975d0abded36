"""Log-probs at given token ids (e.g. a teacher's top-k) from vocabulary-sharded logits, without gathering the vocab.

    lse = vocab_parallel_logsumexp(shard, tp_group=g, vocab_size=V)            # [...] float32, no gradient
    lp = vocab_parallel_logprobs_at(shard, ids, lse, tp_group=g, vocab_size=V)  # [..., K] float32, autograd

The maths, in one place: ``log p(v) = x_v - lse`` with ``lse = log sum_u exp(x_u)`` over the whole vocabulary.

- Forward: each rank takes ``x_v`` for the ids that fall in its shard (zero for the others) and one SUM all-reduce
  of ``[N, K]`` float32 gives every rank all of them; then ``- lse``.
- Backward, no collective (every TP rank holds the same upstream gradient ``g [N, K]``, Megatron's convention):
  ``d/dx_u = sum_{k: id_k = u} g_k - (sum_k g_k) p_u`` with ``p_u = exp(x_u - lse)``, recomputed chunk by chunk in
  float32 and written once into a gradient of the logits' dtype (so the only full-size allocation is that gradient).

``lse`` is the statistic of these same logits, passed in so that it is computed once per position (by
:func:`vocab_parallel_logsumexp`, by the pass that computes the sampled tokens' log-probs, or by a fused output
layer); it is not differentiated: the gradient through the normaliser is the ``- G p`` term above. The signature
``(logits shard, ids, lse) -> logprobs`` is the seam where a fused output-layer kernel (hidden states in, no
logits materialised) can take over.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rlad_megatron.logprobs.vocab_parallel import row_statistics, rows_per_chunk, shard_layout


@torch.no_grad()
def vocab_parallel_logsumexp(
    logits: Tensor, *, tp_group: Any = None, vocab_size: int | None = None, chunk_size: int | None = None
) -> Tensor:
    """Global log-sum-exp of each position's (sharded) distribution, float32 ``[...]`` (= ``logits.shape[:-1]``).

    Args:
        logits: ``[..., V/TP]``, this rank's shard in rank order, any float dtype.
        tp_group: tensor-parallel group, ``None`` on one device.
        vocab_size: the true vocabulary (columns at and beyond it are padding and excluded).
        chunk_size: rows per float32 chunk.
    """
    local_vocab = logits.shape[-1]
    _, _, _, valid = shard_layout(local_vocab, tp_group, vocab_size)
    x = logits.reshape(-1, local_vocab)
    chunk = rows_per_chunk(chunk_size, local_vocab, max(1, x.shape[0]), logits.device)
    return row_statistics(x, tp_group, valid, chunk, with_entropy=False).lse.reshape(logits.shape[:-1])


def _owned(ids: Tensor, start: int, valid: int) -> tuple[Tensor, Tensor]:
    """``(column in this shard (0 where not owned), owned)`` of global ``ids``."""
    local = ids - start
    owned = (local >= 0) & (local < valid)
    return torch.where(owned, local, torch.zeros_like(local)), owned


class _LogprobsAt(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, ids: Tensor, lse: Tensor, group: Any, start: int, valid: int, chunk: int
    ) -> Tensor:
        local_idx, owned = _owned(ids, start, valid)
        picked = torch.where(owned, logits.gather(1, local_idx).float(), torch.zeros((), device=logits.device))
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(picked, op=dist.ReduceOp.SUM, group=group)
        ctx.save_for_backward(logits, local_idx, owned, lse)
        ctx.valid, ctx.chunk = valid, chunk
        return picked - lse.unsqueeze(-1)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        logits, local_idx, owned, lse = ctx.saved_tensors
        valid, chunk = ctx.valid, ctx.chunk
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        grad[:, valid:] = 0  # TP padding columns
        if valid == 0:
            return grad, None, None, None, None, None, None
        g = grad_out.float()
        g_total = g.sum(dim=-1, keepdim=True)  # G: sum of the upstream gradient over the row's K ids
        g_owned = torch.where(owned, g, torch.zeros_like(g))
        buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device)
        for r0 in range(0, logits.shape[0], chunk):
            r1 = min(logits.shape[0], r0 + chunk)
            x = buf[: r1 - r0].copy_(logits[r0:r1, :valid])
            x.sub_(lse[r0:r1].unsqueeze(-1)).exp_().mul_(-g_total[r0:r1])  # -G p
            x.scatter_add_(1, local_idx[r0:r1], g_owned[r0:r1])  # + g at the ids (repeated ids add up)
            grad[r0:r1, :valid].copy_(x)  # rounded once into the logits' dtype
        return grad, None, None, None, None, None, None


def vocab_parallel_logprobs_at(
    logits: Tensor,
    ids: Tensor,
    lse: Tensor,
    *,
    tp_group: Any = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Log-probs ``x_id - lse`` of ``K`` given global token ids per position, with autograd into this rank's shard.

    Args:
        logits: ``[..., V/TP]``, this rank's vocabulary shard (``full.chunk(TP, -1)[rank]``), any float dtype.
        ids: ``[..., K]`` global token ids (any integer dtype, e.g. a teacher's top-k as int32), in
            ``[0, vocab_size)``, the same on every TP rank. Repeats are allowed.
        lse: ``[...]`` float32 global log-sum-exp of these logits (:func:`vocab_parallel_logsumexp`); it carries no
            gradient (the normaliser's gradient is computed here).
        tp_group: tensor-parallel group, ``None`` on one device.
        vocab_size: the true vocabulary; columns at or beyond it are TP padding (they get a zero gradient).
        chunk_size: rows per float32 chunk of the backward pass.

    Returns:
        ``[..., K]`` float32 log-probs, identical on every TP rank.
    """
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"ids must hold integer token ids, got dtype {ids.dtype}")
    lead = tuple(logits.shape[:-1])
    if ids.dim() != logits.dim() or tuple(ids.shape[:-1]) != lead:
        raise ValueError(f"ids of shape {tuple(ids.shape)} must be logits.shape[:-1] + (K,) = {lead} + (K,)")
    if tuple(lse.shape) != lead:
        raise ValueError(f"lse of shape {tuple(lse.shape)} must be logits.shape[:-1] = {lead}")
    local_vocab = logits.shape[-1]
    _, size, start, valid = shard_layout(local_vocab, tp_group, vocab_size)
    limit = local_vocab * size if vocab_size is None else vocab_size
    if ids.numel() and bool(((ids < 0) | (ids >= limit)).any()):
        raise ValueError(
            f"ids hold values outside [0, {limit}): min {int(ids.min())}, max {int(ids.max())}; give masked "
            "positions any valid id (e.g. 0) and mask them in the loss"
        )
    x = logits.reshape(-1, local_vocab)
    k = ids.shape[-1]
    chunk = rows_per_chunk(chunk_size, local_vocab, max(1, x.shape[0]), logits.device)
    out = _LogprobsAt.apply(
        x, ids.reshape(-1, k).long(), lse.detach().float().reshape(-1), tp_group, start, valid, chunk
    )
    return out.reshape(lead + (k,))
