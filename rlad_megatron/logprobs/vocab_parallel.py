"""Token log-probs (and entropy) from logits sharded over the vocabulary, without gathering the vocabulary.

Each tensor-parallel rank holds ``logits[..., V/TP]``, the columns ``[rank * V/TP, (rank + 1) * V/TP)`` of the
(padded) vocabulary. Forward, per chunk of rows upcast to float32: this shard's log-sum-exp ``lse_l`` (and its
own entropy ``H_l`` when asked); then two collectives over the TP group: MAX of ``lse_l``, then one SUM that
combines the rescaled shard sums with the target logits (each owned by exactly one shard, zero elsewhere):

    log p(y) = x_y - lse,        lse = log sum_l exp(lse_l),        H = lse - E_p[x]

The backward needs no collective: every TP rank holds the same upstream gradient (Megatron's convention), and
the gradient of its shard needs only ``lse`` and ``H`` (saved, ``[N]`` each). It recomputes the softmax chunk by
chunk in float32 and writes ``g_y onehot - G p`` (``- g_H p (log p + H)`` with entropy) straight into a buffer
of the logits' dtype, rounding once: apart from that gradient (size L of the logits), only chunk-sized
temporaries are allocated. Columns at or beyond ``vocab_size`` (Megatron's TP padding) are excluded: they get
no probability mass and a zero gradient.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

DEFAULT_CHUNK_ELEMENTS = {"cpu": 1 << 20, "other": 1 << 24}
"""Default float32 elements per chunk (rows * local vocab): 4 MiB on CPU (stays in cache), 64 MiB on accelerators
(few kernel launches; each chunk temporary is still small next to the logits)."""


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


def rows_per_chunk(chunk_size: int | None, local_vocab: int, rows: int, device: torch.device | None = None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit ``DEFAULT_CHUNK_ELEMENTS`` for the device."""
    if chunk_size is None:
        budget = DEFAULT_CHUNK_ELEMENTS["cpu" if device is None or device.type == "cpu" else "other"]
        chunk_size = max(1, budget // max(1, local_vocab))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size (rows per chunk) must be a positive int or None, got {chunk_size!r}")
    return max(1, min(chunk_size, rows))


def _all_reduce(t: Tensor, op: Any, group: Any) -> None:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)


class RowStats(NamedTuple):
    """Per-row statistics of the full (sharded) distribution, float32 ``[N]`` (``extra``: ``[N, K]``)."""

    lse: Tensor
    """Global log-sum-exp over the whole vocabulary."""
    local_lse: Tensor
    """Log-sum-exp over this shard's valid columns only (``-inf`` for a shard without valid columns)."""
    entropy: Tensor | None
    extra: Tensor | None


def shard_chunk_statistics(x: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """``(lse_l, H_l)`` of one float32 chunk ``x [c, valid]`` of this shard's logits (``H_l``: None unless
    ``with_entropy``). ``x`` is overwritten when ``with_entropy``."""
    # torch's fused log_softmax is several times faster on CPU than logsumexp's composite. It keeps the order of
    # x, so lse = max(x) - max(log p), with max(log p) = -log sum exp(x - max(x)) small.
    # (torch.max with indices is ~20x slower than amax on CPU.)
    logp = torch.log_softmax(x, dim=-1)
    lse = torch.amax(x, dim=-1) - torch.amax(logp, dim=-1)
    if not with_entropy:
        return lse, None
    p = torch.exp(x.sub_(lse.unsqueeze(-1)))  # x is free now: reuse it for p
    return lse, -torch.nan_to_num_(p.mul_(logp), nan=0.0).sum(dim=-1)  # 0 log 0 = 0


@torch.no_grad()
def combine_shards(local_lse: Tensor, local_h: Tensor | None, group: Any, extra: Tensor | None = None) -> RowStats:
    """The full distribution's statistics from every shard's ``lse_l`` (and ``H_l``), float32 ``[N]``: two
    collectives over ``group`` (none on one device). ``extra`` (``[N, K]`` float32) is summed over the shards in
    the same SUM collective.

    With ``m = max_l lse_l`` (MAX collective) and ``a_l = exp(lse_l - m)`` (SUM collective of ``a_l`` and
    ``a_l (H_l - (lse_l - m))``): ``lse = m + log S`` and ``H = sum_l a_l (H_l - (lse_l - m)) / S + log S`` with
    ``S = sum_l a_l``.
    """
    with_entropy = local_h is not None
    if group is None or dist.get_world_size(group) == 1:
        return RowStats(local_lse, local_lse, local_h, extra)
    n = local_lse.shape[0]
    k = 0 if extra is None else extra.shape[1]
    top = local_lse.clone()
    _all_reduce(top, dist.ReduceOp.MAX, group)
    sums = torch.zeros(n, 2 + k, dtype=torch.float32, device=local_lse.device)
    has_mass = torch.isfinite(local_lse)
    shift = torch.where(has_mass, local_lse - top, torch.zeros_like(top))
    a = torch.where(has_mass, torch.exp(shift), torch.zeros_like(top))
    sums[:, 0] = a
    if with_entropy:
        sums[:, 1] = torch.where(has_mass, a * (local_h - shift), torch.zeros_like(top))
    if extra is not None:
        sums[:, 2:] = extra
    _all_reduce(sums, dist.ReduceOp.SUM, group)
    log_s = torch.log(sums[:, 0])
    entropy = sums[:, 1] / sums[:, 0] + log_s if with_entropy else None
    return RowStats(top + log_s, local_lse, entropy, sums[:, 2:] if extra is not None else None)


@torch.no_grad()
def row_statistics(
    logits: Tensor, group: Any, valid: int, chunk: int, with_entropy: bool, extra: Tensor | None = None
) -> RowStats:
    """Log-sum-exp (and entropy) of the sharded distribution of 2-D shards ``[N, V_local]``, chunk by chunk
    (:func:`shard_chunk_statistics`), then :func:`combine_shards` (two collectives).
    ``extra`` (``[N, K]`` float32) rides along in the SUM collective."""
    n = logits.shape[0]
    local_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=logits.device)
    local_h = torch.zeros(n, dtype=torch.float32, device=logits.device) if with_entropy else None
    if valid > 0:
        buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device)
        for r0 in range(0, n, chunk):
            r1 = min(n, r0 + chunk)
            x = buf[: r1 - r0]
            x.copy_(logits[r0:r1, :valid])
            lse, h = shard_chunk_statistics(x, with_entropy)
            local_lse[r0:r1] = lse
            if h is not None:
                local_h[r0:r1] = h  # type: ignore[index]
    return combine_shards(local_lse, local_h, group, extra)


def local_targets(targets: Tensor, start: int, valid: int) -> tuple[Tensor, Tensor]:
    """Global token ids -> (this shard's column of each, where owned; 0 elsewhere) and the owned mask: the shard
    holds ids ``start .. start + valid - 1``."""
    local = targets - start
    owned = (local >= 0) & (local < valid)
    return torch.where(owned, local, torch.zeros_like(local)), owned


class _VocabParallelTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, targets: Tensor, group: Any, start: int, valid: int, chunk: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        local_idx, owned = local_targets(targets, start, valid)
        target_logits = torch.where(owned, logits.gather(1, local_idx).float(), torch.zeros((), device=logits.device))
        stats = row_statistics(logits, group, valid, chunk, with_entropy, target_logits)
        logprobs = stats.extra - stats.lse.unsqueeze(-1)  # type: ignore[operator]
        entropy = stats.entropy
        if entropy is None:
            entropy = torch.zeros(0, dtype=torch.float32, device=logits.device)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(logits, local_idx, owned, stats.lse, stats.local_lse, entropy)
        ctx.valid, ctx.chunk = valid, chunk
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor | None, grad_entropy: Tensor | None):  # type: ignore[override]
        logits, local_idx, owned, lse, local_lse, entropy = ctx.saved_tensors
        valid, chunk = ctx.valid, ctx.chunk
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)
        if valid < logits.shape[1]:
            grad[:, valid:] = 0
        if grad_logprobs is None:
            grad_logprobs = torch.zeros(local_idx.shape, dtype=torch.float32, device=logits.device)
        g_lp = grad_logprobs.float()
        g_total = g_lp.sum(dim=-1)  # G: sum over the K targets of a row
        g_owned = torch.where(owned, g_lp, torch.zeros_like(g_lp))
        if valid == 0:
            return grad, None, None, None, None, None, None
        if grad_entropy is None or entropy.numel() == 0:
            _grad_logprobs_only(logits, grad, local_idx, g_owned, g_total, lse, local_lse, valid, chunk)
        else:
            _grad_with_entropy(logits, grad, local_idx, g_owned, g_total, grad_entropy.float(), lse, entropy,
                               valid, chunk)
        return grad, None, None, None, None, None, None


def _grad_logprobs_only(
    logits: Tensor, grad: Tensor, local_idx: Tensor, g_owned: Tensor, g_total: Tensor, lse: Tensor,
    local_lse: Tensor, valid: int, chunk: int,
) -> None:
    """``grad = onehot * g - G p`` per chunk, with ``p = softmax_l(x) exp(lse_l - lse)`` (torch's fused softmax)."""
    finite = torch.isfinite(local_lse)
    coef = torch.where(finite, -g_total * torch.exp(local_lse - lse), torch.zeros_like(lse)).unsqueeze(-1)
    any_empty = not bool(finite.all())
    k = local_idx.shape[1]
    buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device) if logits.dtype != torch.float32 else None
    for r0 in range(0, logits.shape[0], chunk):
        r1 = min(logits.shape[0], r0 + chunk)
        x = logits[r0:r1, :valid]
        if buf is not None:  # upcast first: softmax(bf16, dtype=float32) is much slower on CPU
            x = buf[: r1 - r0].copy_(x)
        p = torch.softmax(x, dim=-1)
        p.mul_(coef[r0:r1])  # -G p
        out = grad[r0:r1, :valid]
        out.copy_(p)  # rounded once into the gradient's dtype
        # target columns: -G p + (sum of g over the row's targets at that column), in float32, rounded once
        idx, g = local_idx[r0:r1], g_owned[r0:r1]
        if k > 1:
            g = ((idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype) @ g.unsqueeze(-1)).squeeze(-1)
        out.scatter_(1, idx, (p.gather(1, idx) + g).to(out.dtype))
        if any_empty:  # rows whose shard logits are all -inf: softmax is NaN there, their gradient is 0
            out[~finite[r0:r1]] = 0.0


def _grad_with_entropy(
    logits: Tensor, grad: Tensor, local_idx: Tensor, g_owned: Tensor, g_total: Tensor, g_entropy: Tensor,
    lse: Tensor, entropy: Tensor, valid: int, chunk: int,
) -> None:
    """``grad = onehot * g - p (G + g_H (log p + H))`` per chunk (``dH/dx = -p (log p + H)``)."""
    buf = torch.empty(chunk, valid, dtype=torch.float32, device=logits.device)
    pbuf = torch.empty_like(buf)
    for r0 in range(0, logits.shape[0], chunk):
        r1 = min(logits.shape[0], r0 + chunk)
        x = buf[: r1 - r0]
        x.copy_(logits[r0:r1, :valid])
        x.sub_(lse[r0:r1].unsqueeze(-1))  # log p
        p = torch.exp(x, out=pbuf[: r1 - r0])
        x.add_(entropy[r0:r1].unsqueeze(-1)).mul_(g_entropy[r0:r1].unsqueeze(-1))
        x.add_(g_total[r0:r1].unsqueeze(-1)).mul_(p).neg_()
        torch.nan_to_num_(x, nan=0.0)  # p = 0 where log p = -inf
        x.scatter_add_(1, local_idx[r0:r1], g_owned[r0:r1])
        grad[r0:r1, :valid].copy_(x)


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
        chunk_size: rows (token positions) per float32 chunk; ``None`` picks ``DEFAULT_CHUNK_ELEMENTS`` per chunk.
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
    chunk = rows_per_chunk(chunk_size, local_vocab, max(1, logits2d.shape[0]), logits.device)
    logprobs, entropy = _VocabParallelTokenLogprobs.apply(
        logits2d, targets2d, tp_group, start, valid, chunk, return_entropy
    )
    logprobs = logprobs.reshape(targets.shape)
    if return_entropy:
        return logprobs, entropy.reshape(lead)
    return logprobs
