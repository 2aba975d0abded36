"""The output layer fused with token log-probs, entropy and top-k: from the last hidden states to per-token values
without ever holding more than one chunk of logits, forward or backward.

Megatron's last pipeline stage computes ``logits = hidden @ W^T`` (``[tokens, V/TP]`` on each tensor-parallel rank)
and the vocab-parallel kernel (``vocab_parallel.py``) reduces them to one value per token. At real vocabularies
(Qwen3: 151,936 rows) the logits and their gradient are a step's largest activations. Here each chunk of token rows
computes its logits ``[c, V/TP]`` (one matmul, in the weight's dtype), takes what the log-probs need in float32,
a cache-sized block of rows at a time (this shard's log-sum-exp and entropy, the target logits, the top-k
candidates) and drops them; the shards are combined with exactly the kernel's collectives
(:func:`~rlad_megatron.logprobs.vocab_parallel.combine_shards`: a MAX and a SUM over TP, no vocabulary gather).
The backward recomputes the logits from the saved hidden states (``x = h W^T / T``), in tiles of all token rows x a
block of the vocabulary, overwrites each tile with its gradient and multiplies it out:

    g_x = (onehot(y) g - p (G + g_H (log p + H))) / T,      dL/dh = g_x W,      dL/dW = g_x^T h

with ``p = exp(x - lse)``, ``G`` the row's summed log-prob gradient and ``g_H`` its entropy gradient. That is one
matmul more than the output layer's own backward (the recomputation): the price of never storing the logits.

Layout, as Megatron's ``ColumnParallelLinear`` has it: the weight is this rank's vocabulary shard ``[V/TP, H]``
(rank order; rows at or beyond ``vocab_size`` are TP padding: no probability, zero gradient); the hidden states are
replicated over the TP ranks (their gradient all-reduced), or with sequence parallelism sharded on their first
(sequence) dimension: all-gathered in the forward and again in the backward (only the local shard is saved), their
gradient reduce-scattered.

The weight's gradient is returned as usual (a weight tied to the input embedding adds it to the embedding's), or,
with ``accumulate_grad_into_main_grad``, added tile by tile into ``weight.main_grad`` (Megatron DDP's gradient
buffer, as Megatron's gradient-accumulation fusion does for its output layer) without a weight-sized temporary;
nothing is returned for the weight then, so the embedding's own gradient of a tied weight still reaches the buffer
through DDP's usual hook.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from rlad_megatron.logprobs.topk import merge_topk_candidates
from rlad_megatron.logprobs.vocab_parallel import (
    combine_shards, local_targets, rows_per_chunk, shard_chunk_statistics, shard_layout,
)

DEFAULT_FUSED_CHUNK_ELEMENTS = {"cpu": 1 << 25, "other": 1 << 26}
"""Default logits elements per chunk or tile (token rows x vocabulary columns), in the weight's dtype: 32M on CPU,
64M on accelerators; at 151,936 / TP columns a forward chunk is 220 x TP rows on CPU and 441 x TP on a GPU. Every
forward chunk reads the whole weight shard, so fewer, larger chunks (CPU: 1/4 the weight reads of 8M-element
chunks, ~5-10% faster at hidden 2048) are worth a tile that is still ~2% of the logits it replaces."""


def fused_chunk_rows(chunk_size: int | None, local_vocab: int, rows: int, device: torch.device | None = None) -> int:
    """Token rows per chunk: ``chunk_size`` if given, else as many as fit ``DEFAULT_FUSED_CHUNK_ELEMENTS``."""
    if chunk_size is None:
        budget = DEFAULT_FUSED_CHUNK_ELEMENTS["cpu" if device is None or device.type == "cpu" else "other"]
        chunk_size = max(1, budget // max(1, local_vocab))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size (token rows per chunk) must be a positive int or None, got {chunk_size!r}")
    return max(1, min(chunk_size, rows))


# ------------------------------------------------------------------------------------------ sequence parallelism
def _tp_size(group: Any) -> int:
    return 1 if group is None else dist.get_world_size(group)


#: torch >= 2.13 names the single-tensor collectives ``*_single`` (the ``*_tensor`` names warn); both work on gloo.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def gather_sequence(x: Tensor, group: Any) -> Tensor:
    """All-gather ``x`` along dim 0 over ``group`` in rank order (sequence parallelism's gather; no autograd)."""
    size = _tp_size(group)
    if size == 1:
        return x
    out = torch.empty((x.shape[0] * size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    _ALL_GATHER(out, x.contiguous(), group=group)
    return out


def reduce_scatter_sequence(x: Tensor, group: Any) -> Tensor:
    """Sum ``x`` over ``group`` and keep this rank's slice of dim 0 (the backward of :func:`gather_sequence`)."""
    size = _tp_size(group)
    if size == 1:
        return x
    out = torch.empty((x.shape[0] // size,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    _REDUCE_SCATTER(out, x.contiguous(), group=group)
    return out


# ------------------------------------------------------------------------------------------------ the kernel
def _sub_rows(tile: Tensor) -> int:
    """Rows of a tile processed at once in float32 (``DEFAULT_CHUNK_ELEMENTS``: cache-sized on CPU)."""
    return rows_per_chunk(None, tile.shape[1], max(1, tile.shape[0]), tile.device)


def _float_rows(tile: Tensor, temperature: float, buf: Tensor | None):
    """``(r0, r1, x)`` over cache-sized row blocks of a logits tile: ``x`` the block in float32 divided by the
    temperature, a view of ``tile`` itself when it is float32 (then writing ``x`` writes the tile), else a copy in
    ``buf`` (flat, from :func:`_float_buffer`)."""
    sub, cols = _sub_rows(tile), tile.shape[1]
    for r0 in range(0, tile.shape[0], sub):
        r1 = min(tile.shape[0], r0 + sub)
        x = tile[r0:r1] if buf is None else buf[: (r1 - r0) * cols].view(r1 - r0, cols).copy_(tile[r0:r1])
        if temperature != 1.0:
            x.div_(temperature)
        yield r0, r1, x


def _float_buffer(tile: Tensor, buf: Tensor | None = None) -> Tensor | None:
    """A flat float32 buffer for :func:`_float_rows` of ``tile`` (``buf`` when it is large enough); None for a
    float32 tile, which is worked on in place."""
    if tile.dtype == torch.float32:
        return None
    need = min(tile.shape[0], _sub_rows(tile)) * tile.shape[1]
    if buf is not None and buf.numel() >= need:
        return buf
    return torch.empty(need, dtype=torch.float32, device=tile.device)


class _FusedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, group: Any, sequence_parallel: bool, start: int,
        valid: int, chunk: int, vocab_chunk: int | None, temperature: float, with_entropy: bool,
        into_main_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        full = gather_sequence(hidden, group) if sequence_parallel else hidden
        h2 = full.reshape(-1, full.shape[-1])
        n, device = h2.shape[0], hidden.device
        local_idx, owned = local_targets(targets, start, valid)
        local_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
        local_h = torch.zeros(n, dtype=torch.float32, device=device) if with_entropy else None
        target_logits = torch.zeros(targets.shape, dtype=torch.float32, device=device)
        w = weight[:valid]
        buf = None
        for c0 in range(0, n if valid > 0 else 0, chunk):
            tile = torch.matmul(h2[c0:c0 + chunk], w.t())  # this chunk's logits [c, valid], the weight's dtype
            buf = _float_buffer(tile, buf)
            for r0, r1, x in _float_rows(tile, temperature, buf):
                rows = slice(c0 + r0, c0 + r1)
                target_logits[rows] = torch.where(owned[rows], x.gather(1, local_idx[rows]), 0.0)
                lse, h = shard_chunk_statistics(x, with_entropy)
                local_lse[rows] = lse
                if h is not None:
                    local_h[rows] = h  # type: ignore[index]
            del tile
        stats = combine_shards(local_lse, local_h, group, target_logits)
        logprobs = stats.extra - stats.lse.unsqueeze(-1)  # type: ignore[operator]
        entropy = stats.entropy
        if entropy is None:
            entropy = torch.zeros(0, dtype=torch.float32, device=device)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, local_idx, owned, stats.lse, entropy)
        ctx.group, ctx.sequence_parallel, ctx.valid = group, sequence_parallel, valid
        ctx.budget, ctx.vocab_chunk = chunk * max(1, valid), vocab_chunk
        ctx.temperature, ctx.into_main_grad = temperature, into_main_grad
        ctx.set_materialize_grads(False)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor | None, grad_entropy: Tensor | None):  # type: ignore[override]
        hidden, weight, local_idx, owned, lse, entropy = ctx.saved_tensors
        group, valid, temperature = ctx.group, ctx.valid, ctx.temperature
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        full = gather_sequence(hidden, group) if ctx.sequence_parallel else hidden
        h2 = full.reshape(-1, full.shape[-1])
        n, dtype, device = h2.shape[0], h2.dtype, h2.device
        if grad_logprobs is None:
            grad_logprobs = torch.zeros(local_idx.shape, dtype=torch.float32, device=device)
        g_lp = grad_logprobs.float()
        rows = _RowGrads(
            lse=lse.unsqueeze(-1), g_total=g_lp.sum(dim=-1, keepdim=True),  # G: the row's summed log-prob gradient
            g_owned=torch.where(owned, g_lp, torch.zeros((), device=device)), local_idx=local_idx,
            entropy=None if grad_entropy is None or entropy.numel() == 0 else entropy.unsqueeze(-1),
            g_entropy=None if grad_entropy is None else grad_entropy.float().unsqueeze(-1),
        )
        main_grad = getattr(weight, "main_grad", None) if ctx.into_main_grad else None
        grad_w = torch.zeros_like(weight) if need_w and main_grad is None else None  # padding rows stay zero
        tile_rows, cols = _backward_tiles(n, valid, ctx.budget, ctx.vocab_chunk)
        row_chunks = [(r0, min(n, r0 + tile_rows)) for r0 in range(0, n, tile_rows)]
        blocks = [(v0, min(valid, v0 + cols)) for v0 in range(0, valid, cols)]
        # dL/dh sums over the vocabulary blocks: in float32 when there are several and the dtype is lower
        acc_h = None
        if need_h:
            low = dtype != torch.float32 and len(blocks) > 1
            acc_h = torch.zeros(n, h2.shape[1], dtype=torch.float32 if low else dtype, device=device)
        buf = None
        for v0, v1 in blocks:
            wb = weight[v0:v1]
            dst = None if not need_w else (main_grad if main_grad is not None else grad_w)[v0:v1]  # type: ignore[index]
            # this block's dL/dW sums over the row chunks: in float32 when there are several and dst is lower
            acc_w = dst
            if dst is not None and len(row_chunks) > 1 and dst.dtype != torch.float32:
                acc_w = torch.zeros(dst.shape, dtype=torch.float32, device=device)
            for r0, r1 in row_chunks:
                hc = h2[r0:r1]
                tile = torch.matmul(hc, wb.t())  # the logits again, [rows, cols]; overwritten by their gradient
                buf = _float_buffer(tile, buf)
                _logits_grad_(tile, buf, rows, r0, v0, temperature)
                if acc_h is not None:
                    _add_product(acc_h[r0:r1], tile, wb)
                if acc_w is not None:
                    _add_product(acc_w, tile.t(), hc)
                del tile
            if acc_w is not None and acc_w is not dst:
                dst.copy_(acc_w) if main_grad is None else dst.add_(acc_w)  # type: ignore[union-attr]
        grad_hidden = None
        if acc_h is not None:
            grad_hidden = acc_h.to(dtype).view(full.shape)
            if ctx.sequence_parallel:
                grad_hidden = reduce_scatter_sequence(grad_hidden, group)
            elif _tp_size(group) > 1:
                dist.all_reduce(grad_hidden, group=group)
        return grad_hidden, grad_w, None, None, None, None, None, None, None, None, None, None


class _RowGrads(NamedTuple):
    """Per-row inputs of the logits' gradient, float32 ``[N, 1]`` (``g_owned``, ``local_idx``: ``[N, K]``)."""

    lse: Tensor
    g_total: Tensor
    g_owned: Tensor
    local_idx: Tensor
    entropy: Tensor | None
    g_entropy: Tensor | None


def _logits_grad_(tile: Tensor, buf: Tensor | None, rows: _RowGrads, row0: int, col0: int,
                  temperature: float) -> None:
    """Overwrite a tile of logits (rows ``row0 + i``, columns ``col0 + j`` of this shard) with their gradient
    ``(onehot g - p (G + g_H (log p + H))) / T``, computed in float32 per cache-sized row block, rounded once."""
    cols = tile.shape[1]
    for r0, r1, x in _float_rows(tile, temperature, buf):
        at = slice(row0 + r0, row0 + r1)
        x.sub_(rows.lse[at])  # log p
        if rows.entropy is not None:  # -p (G + g_H (log p + H))
            p = torch.exp(x)
            x.add_(rows.entropy[at]).mul_(rows.g_entropy[at])  # type: ignore[index]
            x.add_(rows.g_total[at]).mul_(p).neg_()
        else:  # -G p
            x.exp_().mul_(rows.g_total[at]).neg_()
        col = rows.local_idx[at] - col0
        inside = (col >= 0) & (col < cols)
        x.scatter_add_(1, col.clamp_(0, cols - 1), torch.where(inside, rows.g_owned[at], 0.0))
        if temperature != 1.0:
            x.div_(temperature)
        if buf is not None:
            tile[r0:r1].copy_(x)


def _add_product(out: Tensor, a: Tensor, b: Tensor) -> None:
    """``out += a @ b``: inside the matmul when the dtypes agree, else the product rounded once and added."""
    if out.dtype == a.dtype:
        out.addmm_(a, b)
    else:
        out.add_(a @ b)


MIN_VOCAB_BLOCK = 256
"""Fewest vocabulary columns of a backward tile (narrower tiles make slow matmuls)."""


def _backward_tiles(n: int, valid: int, budget: int, vocab_chunk: int | None) -> tuple[int, int]:
    """(rows, columns) of the backward's tiles: as many rows as fit ``budget`` elements (all of them when they fit)
    with columns ``vocab_chunk`` or ``budget / n`` (at least :data:`MIN_VOCAB_BLOCK`), so that each column block's
    weight gradient is one matmul over all rows (rounded once) rather than a sum of row chunks."""
    cols = vocab_chunk if vocab_chunk is not None else max(MIN_VOCAB_BLOCK, budget // max(1, n))
    cols = max(1, min(cols, valid))
    return max(1, min(n, budget // cols)), cols


def _check(hidden: Tensor, weight: Tensor, tp_group: Any, sequence_parallel: bool, vocab_size: int | None,
           temperature: float) -> tuple[tuple[int, ...], int, int]:
    """Validate the shared inputs; returns (the leading shape after the sequence gather, vocab start, valid)."""
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"hidden and weight must be floating point, got {hidden.dtype} and {weight.dtype}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight of shape {tuple(weight.shape)} must be [V/TP, H] with H = hidden.shape[-1] = "
                         f"{hidden.shape[-1]}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    _, size, start, valid = shard_layout(weight.shape[0], tp_group, vocab_size)
    lead = list(hidden.shape[:-1])
    if sequence_parallel and size > 1:
        if hidden.dim() < 2:
            raise ValueError("sequence_parallel needs hidden states [S/TP, ..., H]")
        lead[0] *= size
    return tuple(lead), start, valid


def fused_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    tp_group: Any = None,
    sequence_parallel: bool = False,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    accumulate_grad_into_main_grad: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight^T / temperature)``, with autograd w.r.t. ``hidden``
    and ``weight``, chunk by chunk (never more than one chunk's logits, forward or backward).

    Args:
        hidden: ``[..., H]`` the last hidden states (after the final norm); with ``sequence_parallel`` this rank's
            shard ``[S/TP, ..., H]`` of the sequence dimension (Megatron's ``[S, B, H]`` layout).
        weight: ``[V/TP, H]`` this rank's vocabulary shard of the output layer (the embedding when tied), the same
            dtype as ``hidden``.
        targets: global token ids shaped like the (gathered) hidden states' leading dims ``[...]``, or ``[..., K]``
            for K ids per position; in ``[0, vocab_size)`` and the same on every TP rank.
        tp_group: the tensor-parallel group; ``None`` on one device.
        sequence_parallel: ``hidden`` is sharded on dim 0 over ``tp_group`` (ignored at TP=1).
        vocab_size: the true vocabulary (later rows of the padded weight are excluded); ``None``: no padding.
        temperature: log-probs of the tempered distribution (``1.0``: the model's own).
        return_entropy: also return the entropy of each position's full distribution (same pass).
        chunk_size: token rows per chunk of the forward (all of this shard's vocabulary at once); ``None``:
            ``DEFAULT_FUSED_CHUNK_ELEMENTS`` logits per chunk. The backward's tiles hold as many logits.
        vocab_chunk_size: vocabulary columns per backward tile; ``None``: as many as fit with all token rows.
        accumulate_grad_into_main_grad: add the weight's gradient into ``weight.main_grad`` (Megatron DDP's buffer)
            instead of returning it (see the module docstring); a weight without ``main_grad`` gets it returned.

    Returns:
        float32 log-probs shaped like ``targets``; with ``return_entropy``, ``(logprobs, entropy [...])``.
        Identical on every TP rank.
    """
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    lead, start, valid = _check(hidden, weight, tp_group, sequence_parallel, vocab_size, temperature)
    multi = targets.dim() == len(lead) + 1 and tuple(targets.shape[:-1]) == lead
    if not multi and tuple(targets.shape) != lead:
        raise ValueError(f"targets of shape {tuple(targets.shape)} must be {lead} (the hidden states' leading dims"
                         f"{', gathered over TP' if sequence_parallel else ''}) or {lead} + (K,)")
    limit = weight.shape[0] * _tp_size(tp_group) if vocab_size is None else vocab_size
    if targets.numel() and bool(((targets < 0) | (targets >= limit)).any()):
        raise ValueError(f"targets hold ids outside [0, {limit}): min {int(targets.min())}, max "
                         f"{int(targets.max())}; mask such positions in the loss and give them any valid id (e.g. 0)")
    if vocab_chunk_size is not None and (isinstance(vocab_chunk_size, bool) or not isinstance(vocab_chunk_size, int)
                                         or vocab_chunk_size < 1):
        raise ValueError(f"vocab_chunk_size (columns per backward tile) must be a positive int or None, got "
                         f"{vocab_chunk_size!r}")
    n = 1
    for d in lead:
        n *= d
    targets2d = targets.reshape(n, -1).long()
    chunk = fused_chunk_rows(chunk_size, max(1, valid), max(1, n), hidden.device)
    logprobs, entropy = _FusedTokenLogprobs.apply(
        hidden, weight, targets2d, tp_group, bool(sequence_parallel and _tp_size(tp_group) > 1), start, valid, chunk,
        vocab_chunk_size, float(temperature), return_entropy, accumulate_grad_into_main_grad,
    )
    logprobs = logprobs.reshape(targets.shape)
    if return_entropy:
        return logprobs, entropy.reshape(lead)
    return logprobs


@torch.no_grad()
def fused_topk(
    hidden: Tensor,
    weight: Tensor,
    k: int,
    *,
    tp_group: Any = None,
    sequence_parallel: bool = False,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most likely tokens of each position's full distribution ``softmax(hidden @ weight^T / T)``, chunk
    by chunk, without a gradient (a teacher's top-k). Inputs as :func:`fused_token_logprobs`.

    Returns:
        ``(logprobs [..., k] float32, ids [..., k] int64 global token ids)`` sorted by decreasing probability,
        identical on every TP rank: the format of :func:`rlad_megatron.logprobs.vocab_parallel_topk`.
    """
    lead, start, valid = _check(hidden, weight, tp_group, sequence_parallel, vocab_size, temperature)
    true_vocab = weight.shape[0] * _tp_size(tp_group) if vocab_size is None else vocab_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= true_vocab:
        raise ValueError(f"k must be an int in [1, {true_vocab}] (the vocabulary size), got {k!r}")
    full = gather_sequence(hidden, tp_group) if sequence_parallel else hidden
    h2 = full.reshape(-1, full.shape[-1])
    n, device = h2.shape[0], hidden.device
    chunk = fused_chunk_rows(chunk_size, max(1, valid), max(1, n), device)
    local_lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    values = torch.full((n, k), float("-inf"), dtype=torch.float32, device=device)
    ids = torch.zeros((n, k), dtype=torch.int64, device=device)
    local_k = min(k, valid)
    buf = None
    for c0 in range(0, n if valid > 0 else 0, chunk):
        tile = torch.matmul(h2[c0:c0 + chunk], weight[:valid].t())
        buf = _float_buffer(tile, buf)
        for r0, r1, x in _float_rows(tile, temperature, buf):
            at = slice(c0 + r0, c0 + r1)
            v, i = torch.topk(x, local_k, dim=-1)
            values[at, :local_k] = v
            ids[at, :local_k] = i + start
            local_lse[at] = shard_chunk_statistics(x, False)[0]
        del tile
    lse = combine_shards(local_lse, None, tp_group).lse
    best, out_ids = merge_topk_candidates(values, ids, k, tp_group)
    return (best - lse.unsqueeze(-1)).reshape(lead + (k,)), out_ids.reshape(lead + (k,))
