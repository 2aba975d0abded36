"""Context parallelism's sequence layout: which tokens of a row each context-parallel rank holds, and back.

Megatron's context parallelism (Transformer Engine's ring attention) expects every CP rank to hold two of the
``2 x CP`` equal chunks of each sequence: chunk ``r`` and chunk ``2 CP - 1 - r``, so that under the causal mask
every rank does the same attention work (an early chunk is cheap, its mirror late chunk is expensive). Every
per-token tensor (tokens, position ids, labels, masks, log-probs) is split the same way, along its sequence
dimension, and per-token outputs (log-probs) are put back in order with :func:`cp_merge`.

The forward step (``learner.policy``) takes each micro-batch through :func:`context_parallel_rows` when
``parallel.context_parallel > 1``: rows padded (:func:`cp_row_width`), split, and the per-token log-probs
all-gathered back whole (:func:`cp_all_gather_merge`, autograd-correct), with the loss scale of
:func:`cp_loss_scale`. The attention is TE's on GPUs, ``models.cp_attention`` otherwise. Tested on CPU against
CP=1 (``tests/distributed/test_context_parallel.py``). The GPU test with TE's ring attention
(``tests/gpu/test_context_parallel_gpu.py``) needs 2 GPUs and Transformer Engine and has never run (docs/gpu.md).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def cp_padded_length(length: int, cp_size: int) -> int:
    """The smallest row length >= ``length`` that splits into ``2 x cp_size`` equal chunks."""
    if cp_size < 1:
        raise ValueError(f"context parallel size must be >= 1, got {cp_size}")
    multiple = 2 * cp_size if cp_size > 1 else 1
    return -(-length // multiple) * multiple


def cp_chunk_index(cp_size: int, cp_rank: int) -> tuple[int, int]:
    """The two chunks (of ``2 x cp_size``) that rank ``cp_rank`` holds."""
    if not 0 <= cp_rank < cp_size:
        raise ValueError(f"context parallel rank {cp_rank} is not in [0, {cp_size})")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def cp_split(tensor: torch.Tensor, cp_size: int, cp_rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's part of ``tensor`` along its sequence dimension ``dim`` (length a multiple of ``2 x cp_size``):
    chunks ``cp_rank`` and ``2 cp_size - 1 - cp_rank``, concatenated. ``cp_size == 1``: ``tensor`` itself."""
    if cp_size == 1:
        return tensor
    length = tensor.shape[dim]
    if length % (2 * cp_size):
        raise ValueError(f"sequence length {length} does not split into 2 x CP={cp_size} chunks: pad rows to "
                         f"cp_padded_length(...) = {cp_padded_length(length, cp_size)}")
    chunks = tensor.chunk(2 * cp_size, dim=dim)
    first, second = cp_chunk_index(cp_size, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=dim)


def cp_merge(parts: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of :func:`cp_split`: ``parts[r]`` is rank r's split; returns the tensor in sequence order (e.g. after
    an all-gather of per-token log-probs over the CP group)."""
    cp_size = len(parts)
    if cp_size == 1:
        return parts[0]
    chunks: list[torch.Tensor | None] = [None] * (2 * cp_size)
    for rank, part in enumerate(parts):
        first, second = cp_chunk_index(cp_size, rank)
        chunks[first], chunks[second] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ collectives
class _AllGatherAlongDim(torch.autograd.Function):
    """All-gather over ``group`` along ``dim`` (rank order). Backward: every rank's gradient of the gathered
    tensor summed, this rank's slice kept (a reduce-scatter): the exact gradient when every rank uses the gathered
    tensor in its own part of the computation (keys/values: each rank's own queries; log-probs: each rank's copy
    of the loss)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(tensor, memory_format=torch.contiguous_format)
                 for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group, dim = ctx.group, ctx.dim
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if dist.get_backend(group) == "nccl":
            stacked = grad.movedim(dim, 0).contiguous()
            out = torch.empty((stacked.shape[0] // world,) + tuple(stacked.shape[1:]), dtype=grad.dtype,
                              device=grad.device)
            dist.reduce_scatter_tensor(out, stacked, group=group)
            return out.movedim(0, dim), None, None
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=group)  # gloo has no reduce-scatter
        return total.chunk(world, dim=dim)[rank].contiguous(), None, None


def cp_all_gather_merge(tensor: torch.Tensor, group, dim: int) -> torch.Tensor:
    """This rank's :func:`cp_split` part of a sequence -> the whole sequence in order, on every rank of the CP
    ``group`` (autograd: see :class:`_AllGatherAlongDim`)."""
    cp_size = dist.get_world_size(group)
    if cp_size == 1:
        return tensor
    gathered = _AllGatherAlongDim.apply(tensor, group, dim)
    return cp_merge(list(gathered.chunk(cp_size, dim=dim)), dim=dim)


# ------------------------------------------------------------------------------------------------ forward step
def cp_loss_scale(num_micro_batches: int, data_parallel: int, cp_size: int) -> float:
    """The factor the forward step multiplies each micro-batch's loss share by, so that the summed gradient is
    exactly the share's gradient.

    Megatron divides a loss by the number of micro-batches and multiplies it by the CP size (its convention for
    losses over a rank's own tokens); DDP averages gradients over the DP x CP ranks. Under CP every CP rank
    computes the whole (gathered) loss, and the log-prob gather's backward sums the CP copies' gradients (x CP).
    Net factor ``CP x CP / (num_micro x DP x CP)``: undone by ``num_micro x DP / CP`` (``num_micro x DP`` at CP=1).
    """
    return float(num_micro_batches * data_parallel) / cp_size


def cp_row_width(width: int, cp_size: int, length_multiple: int = 1) -> int:
    """The width a row of ``width`` tokens is padded to under CP: ``2 x CP`` equal chunks, each rank's part (two
    chunks) a multiple of ``length_multiple`` (sequence parallelism splits it over the TP ranks)."""
    if cp_size == 1:
        return width
    multiple = 2 * cp_size * max(1, length_multiple)
    return -(-width // multiple) * multiple


class ContextParallelRows:
    """One micro-batch's rows as a CP rank feeds them to the model, and its per-token outputs back.

    Rows are right-padded from width ``W`` to ``cp_padded_length`` (padding keys are masked for every real query;
    padding queries attend causally, their outputs are dropped); tokens, position ids and the next-token targets
    (made on the whole row, then split) hold this rank's two chunks; the attention mask stays whole (``[.., Wp,
    Wp]``): the CP attention keeps the rows of its local queries. ``merge`` all-gathers per-position values
    ``[R, Wp / CP]`` over the CP group and returns them as the unsplit model's ``[R, W - 1]``.
    """

    def __init__(self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 cp_size: int, cp_rank: int, group, length_multiple: int = 1) -> None:
        width = int(tokens.shape[1])
        padded = cp_row_width(width, cp_size, length_multiple)
        extra = padded - width
        self.width, self.padded, self.cp_size, self.cp_rank, self.group = width, padded, cp_size, cp_rank, group
        targets = torch.nn.functional.pad(tokens[:, 1:], (0, extra + 1))
        tokens = torch.nn.functional.pad(tokens, (0, extra))
        if extra:
            last = position_ids[:, -1:]
            steps = torch.arange(1, extra + 1, device=position_ids.device, dtype=position_ids.dtype)
            position_ids = torch.cat([position_ids, last + steps], dim=1)
        self.tokens = cp_split(tokens, cp_size, cp_rank)
        self.position_ids = cp_split(position_ids.expand(tokens.shape[0], -1), cp_size, cp_rank)
        self.targets = cp_split(targets, cp_size, cp_rank)
        self.attention_mask = _pad_mask(attention_mask, padded) if attention_mask is not None else None

    def split(self, values: torch.Tensor) -> torch.Tensor:
        """``[R, W - 1, ...]`` per-position inputs of the unsplit model (e.g. token ids asked about) -> this rank's
        ``[R, Wp / CP, ...]``, as the targets are split (padding positions hold 0)."""
        pad = torch.zeros((values.shape[0], self.padded - values.shape[1]) + tuple(values.shape[2:]),
                          dtype=values.dtype, device=values.device)
        return cp_split(torch.cat([values, pad], dim=1), self.cp_size, self.cp_rank)

    def merge(self, values: torch.Tensor) -> torch.Tensor:
        """``[R, Wp / CP, ...]`` values of this rank's positions -> ``[R, W - 1, ...]`` in sequence order (keeps
        autograd; every CP rank gets the whole rows)."""
        return cp_all_gather_merge(values, self.group, dim=1)[:, : self.width - 1]


def _pad_mask(mask: torch.Tensor, padded: int) -> torch.Tensor:
    """``[.., W, W]`` bool mask (True = masked) -> ``[.., Wp, Wp]``: the real block unchanged, padding keys masked
    for real queries, padding queries causal (their outputs are discarded)."""
    width = mask.shape[-1]
    if padded == width:
        return mask
    out = torch.ones(*mask.shape[:-2], padded, padded, dtype=torch.bool, device=mask.device).triu(diagonal=1)
    out[..., :width, :width] = mask
    out[..., :width, width:] = True
    return out


def context_parallel_rows(micro_batch, length_multiple: int = 1, *,
                          te_attention: bool = False) -> "ContextParallelRows | None":
    """The CP view of ``micro_batch`` (a ``learner.batching.MicroBatch``) under the current Megatron parallel
    state; None at CP=1 (the forward step then uses the micro-batch as it is). ``te_attention``: the model's
    attention is Transformer Engine's (its CP attention is causal by itself and takes no mask; rows are only
    right-padded, so causal is exact)."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    cp_size = ps.get_context_parallel_world_size()
    if cp_size == 1:
        return None
    if micro_batch.packed_seq_params is not None:
        raise NotImplementedError(
            f"parallel.context_parallel={cp_size} with packed THD rows (trainer.sequence_packing=true and Transformer "
            "Engine's attention) is not supported: set trainer.sequence_packing=false; token-budget micro-batches "
            "(trainer.max_tokens_per_micro_batch) work with context parallelism")
    mask = None if te_attention else micro_batch.attention_mask
    return ContextParallelRows(micro_batch.tokens, micro_batch.position_ids, mask, cp_size,
                               ps.get_context_parallel_rank(), ps.get_context_parallel_group(), length_multiple)
