"""Token log-probs (and entropy) from logits sharded over the vocabulary, without gathering the vocabulary.

Each tensor-parallel rank holds ``logits[..., V/TP]``, the columns ``[rank * V/TP, (rank + 1) * V/TP)`` of the
(padded) vocabulary. Per chunk of rows, in float32 and in one pass over the shard, the forward computes the
shard's row max, sum of ``exp(x - max)`` (and ``sum exp(x - max) (x - max)`` for the entropy); then two
collectives over the TP group combine them: MAX of the row maxima, then one SUM of the rescaled sums together
with the target logits (each owned by exactly one shard, zero elsewhere). With ``lse = max + log sum exp``:

    log p(y) = x_y - lse,        H = lse - E_p[x]

The backward needs no collective: every TP rank holds the same upstream gradient (Megatron's convention), and
the gradient of its shard only needs the global ``lse`` and ``H`` saved by the forward. It recomputes the
softmax chunk by chunk in float32 and writes ``g_y * (onehot - p) - g_H * p (log p + H)`` straight into a
buffer of the logits' dtype: apart from that gradient buffer (size L of the logits), only chunk-sized
temporaries are allocated. Columns at or beyond ``vocab_size`` (Megatron's TP padding) are excluded: they get
no probability mass and a zero gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_CHUNK_ELEMENTS = 1 << 20
"""Default float32 elements per chunk (rows * local vocab), 4 MiB: cache-friendly and small next to the logits."""


def shard_layout(local_vocab: int, tp_group: Any, vocab_size: int | None) -> tuple[int, int, int, int]:
    """``(tp_rank, tp_size, vocab_start, valid_local)`` of this rank's shard.

    ``valid_local`` is how many of the shard's ``local_vocab`` columns are real vocabulary (the rest are padding).
    """
    rank, size = (0, 1) if tp_group is None else (dist.get_rank(tp_group), dist.get_world_size(tp_group))
    padded = local_vocab * size
    if vocab_size is None:
        vocab_size = padded
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= padded:
        raise ValueError(
            f"vocab_size must be an int in [1, {padded}] (local shard {local_vocab} x TP {size}), got {vocab_size!r}"
        )
    start = rank * local_vocab
    return rank, size, start, max(0, min(local_vocab, vocab_size - start))


def rows_per_chunk(chunk_size: int | None, local_vocab: int, rows: int) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit ``DEFAULT_CHUNK_ELEMENTS``."""
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // max(1, local_vocab))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size (rows per chunk) must be a positive int or None, got {chunk_size!r}")
    return max(1, min(chunk_size, rows))


def _all_reduce(t: Tensor, op: Any, group: Any) -> None:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)


@torch.no_grad()
def row_statistics(
    logits: Tensor, group: Any, valid: int, chunk: int, with_entropy: bool, extra: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Global ``lse [N]`` (and entropy ``[N]``) of 2-D shards ``[N, V_local]``, float32; two collectives.

    ``extra`` (``[N, K]`` float32, optional) is summed over the group in the same SUM collective and returned.
    """
    n = logits.shape[0]
    k = 0 if extra is None else extra.shape[1]
    local_max = torch.full((n,), float("-inf"), dtype=torch.float32, device=logits.device)
    sums = torch.zeros(n, 2 + k, dtype=torch.float32, device=logits.device)  # [sum e, sum e (x - m), extra...]
    if valid > 0:
        buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device)
        ebuf = torch.empty_like(buf) if with_entropy else None
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            x = buf[: r1 - r0]
            x.copy_(logits[r0:r1, :valid])
            m = torch.amax(x, dim=-1)
            local_max[r0:r1] = m
            x.sub_(m.unsqueeze(-1))
            if ebuf is None:
                sums[r0:r1, 0] = x.exp_().sum(dim=-1)
            else:
                e = torch.exp(x, out=ebuf[: r1 - r0])
                sums[r0:r1, 0] = e.sum(dim=-1)
                sums[r0:r1, 1] = torch.nan_to_num_(x.mul_(e), nan=0.0).sum(dim=-1)  # 0 * -inf for -inf logits
    global_max = local_max.clone()
    _all_reduce(global_max, dist.ReduceOp.MAX, group)
    # Rescale this shard's sums from its own max to the global one before adding them up.
    has_mass = sums[:, 0] > 0
    shift = torch.where(has_mass, local_max - global_max, torch.zeros_like(local_max))
    scale = torch.where(has_mass, torch.exp(shift), torch.zeros_like(local_max))
    sums[:, 1] = scale * (sums[:, 1] + shift * sums[:, 0])
    sums[:, 0] = scale * sums[:, 0]
    if extra is not None:
        sums[:, 2:] = extra
    _all_reduce(sums, dist.ReduceOp.SUM, group)
    lse = global_max + torch.log(sums[:, 0])
    entropy = torch.log(sums[:, 0]) - sums[:, 1] / sums[:, 0] if with_entropy else None
    return lse, entropy, (sums[:, 2:] if extra is not None else None)


def _local_targets(targets: Tensor, start: int, valid: int) -> tuple[Tensor, Tensor]:
    local = targets - start
    owned = (local >= 0) & (local < valid)
    return torch.where(owned, local, torch.zeros_like(local)), owned


class _VocabParallelTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, targets: Tensor, group: Any, start: int, valid: int, chunk: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        local_idx, owned = _local_targets(targets, start, valid)
        target_logits = torch.where(owned, logits.gather(1, local_idx).float(), torch.zeros((), device=logits.device))
        lse, entropy, target_logits = row_statistics(logits, group, valid, chunk, with_entropy, target_logits)
        logprobs = target_logits - lse.unsqueeze(-1)  # type: ignore[operator]
        if entropy is None:
            entropy = torch.zeros(0, dtype=torch.float32, device=logits.device)
        ctx.save_for_backward(logits, local_idx, owned, lse, entropy)
        ctx.valid, ctx.chunk = valid, chunk
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor | None, grad_entropy: Tensor | None):  # type: ignore[override]
        logits, local_idx, owned, lse, entropy = ctx.saved_tensors
        valid, chunk = ctx.valid, ctx.chunk
        n = logits.shape[0]
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        if valid < logits.shape[1]:
            grad[:, valid:] = 0
        if grad_logprobs is None:
            grad_logprobs = torch.zeros(local_idx.shape, dtype=torch.float32, device=logits.device)
        g_lp = grad_logprobs.float()
        g_total = g_lp.sum(dim=-1)  # sum over the K targets of a row
        g_owned = torch.where(owned, g_lp, torch.zeros_like(g_lp))
        use_entropy = grad_entropy is not None and entropy.numel() > 0
        if valid > 0:
            buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device)
            pbuf = torch.empty_like(buf) if use_entropy else None
            for r0 in range(0, n, chunk):
                r1 = min(n, r0 + chunk)
                x = buf[: r1 - r0]
                x.copy_(logits[r0:r1, :valid])
                x.sub_(lse[r0:r1].unsqueeze(-1))  # log p
                if pbuf is None:
                    x.exp_().mul_(-g_total[r0:r1].unsqueeze(-1))  # -G p
                else:
                    p = torch.exp(x, out=pbuf[: r1 - r0])
                    g_h = grad_entropy[r0:r1].float().unsqueeze(-1)  # type: ignore[index]
                    # -p (G + g_H (log p + H)), with 0 where p = 0 (log p = -inf)
                    x.add_(entropy[r0:r1].unsqueeze(-1)).mul_(g_h).add_(g_total[r0:r1].unsqueeze(-1)).mul_(p).neg_()
                    torch.nan_to_num_(x, nan=0.0)
                x.scatter_add_(1, local_idx[r0:r1], g_owned[r0:r1])  # + g_y at the target (owned rows only)
                grad[r0:r1, :valid].copy_(x)
        return grad, None, None, None, None, None, None


def vocab_parallel_token_logprobs(
    logits: Tensor,
    targets: Tensor,
    *,
    tp_group: Any = None,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of target tokens from this rank's vocabulary shard of the logits, with autograd.

    Args:
        logits: ``[..., V/TP]``, this rank's shard, ranks in vocabulary order (``full.chunk(TP, -1)[rank]``), any
            float dtype. A non-contiguous tensor is copied: pass logits in their native layout (e.g. Megatron's
            ``[S, B, V/TP]`` with ``targets`` as ``[S, B]``) rather than a transposed view.
        targets: ``[...]`` global token ids (``logits.shape[:-1]``), or ``[..., K]`` for K ids per position
            (e.g. a teacher's top-k). Must be in ``[0, vocab_size)``; the same on every TP rank.
        tp_group: the tensor-parallel process group (e.g.
            ``megatron.core.parallel_state.get_tensor_model_parallel_group()``); ``None`` for one device
            (no collective, even when torch.distributed is initialised).
        chunk_size: rows (token positions) per float32 chunk; ``None`` picks about ``2**20`` elements per chunk.
        vocab_size: the true vocabulary size; columns at or beyond it are TP padding, excluded from the softmax.
            ``None``: no padding (``V/TP * TP``).
        return_entropy: also return the entropy of each position's full distribution (same pass).

    Returns:
        float32 log-probs shaped like ``targets``; with ``return_entropy``, ``(logprobs, entropy [...])``.
        Identical on every TP rank; their gradient flows back into this rank's shard only.
    """
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    lead = tuple(logits.shape[:-1])
    multi = targets.dim() == logits.dim() and tuple(targets.shape[:-1]) == lead
    if not multi and tuple(targets.shape) != lead:
        raise ValueError(
            f"targets of shape {tuple(targets.shape)} must be logits.shape[:-1] = {lead} (or {lead} + (K,))"
        )
    local_vocab = logits.shape[-1]
    _, _, start, valid = shard_layout(local_vocab, tp_group, vocab_size)
    full_vocab = local_vocab * (1 if tp_group is None else dist.get_world_size(tp_group))
    limit = full_vocab if vocab_size is None else vocab_size
    if targets.numel() and bool(((targets < 0) | (targets >= limit)).any()):
        raise ValueError(
            f"targets hold ids outside [0, {limit}): min {int(targets.min())}, max {int(targets.max())}; "
            "mask such positions in the loss and give them any valid id (e.g. 0)"
        )
    logits2d = logits.reshape(-1, local_vocab)
    targets2d = targets.reshape(logits2d.shape[0], -1).long()
    chunk = rows_per_chunk(chunk_size, local_vocab, max(1, logits2d.shape[0]))
    logprobs, entropy = _VocabParallelTokenLogprobs.apply(
        logits2d, targets2d, tp_group, start, valid, chunk, return_entropy
    )
    logprobs = logprobs.reshape(targets.shape)
    if return_entropy:
        return logprobs, entropy.reshape(lead)
    return logprobs
