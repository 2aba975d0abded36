"""Context parallelism's sequence layout: which tokens of a row each context-parallel rank holds, and back.

Megatron's context parallelism (Transformer Engine's ring attention) expects every CP rank to hold two of the
``2 x CP`` equal chunks of each sequence: chunk ``r`` and chunk ``2 CP - 1 - r``, so that under the causal mask
every rank does the same attention work (an early chunk is cheap, its mirror late chunk is expensive). Every
per-token tensor (tokens, position ids, labels, masks, log-probs) is split the same way, along its sequence
dimension, and per-token outputs (log-probs) are put back in order with :func:`cp_merge`.

The forward step calls :func:`cp_split` on the micro-batch when ``parallel.context_parallel > 1`` (the row length
padded to a multiple of ``2 x CP`` first: :func:`cp_padded_length`). Pure tensor code, tested on CPU against the
unsplit layout; the attention itself needs TE on a GPU (``tests/gpu/test_context_parallel_gpu.py``).
"""
from __future__ import annotations

import torch


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
