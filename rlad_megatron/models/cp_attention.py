"""Context-parallel core attention for Megatron's local (non-Transformer-Engine) layer spec.

Megatron's ``DotProductAttention`` refuses ``context_parallel_size > 1`` (only TE's attention does the ring
exchange). :class:`ContextParallelDotProductAttention` takes its place in the local spec when CP > 1 (CPU runs,
GPU runs without TE; see ``models.builder.layer_spec``): each CP rank holds its two load-balanced chunks of the
sequence (``learner.context_parallel.cp_split``: chunks ``r`` and ``2 CP - 1 - r``) for Q, K and V; it all-gathers
K and V over the CP group (backward: the key/value gradients of every rank's queries summed back to the rank that
owns those positions), puts them in sequence order and runs Megatron's own ``DotProductAttention`` (same softmax
scale, GQA expansion, dropout and masking) for the local queries against the whole sequence, the mask rows being
the local queries' GLOBAL positions.

It is the simple all-gather form of CP (no ring, each rank keeps the whole ``K``/``V`` of a layer while it
attends): exact, and what makes CP testable on CPU; the memory-saving ring attention is TE's, on GPUs.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from megatron.core.transformer.module import MegatronModule

from rlad_megatron.learner.context_parallel import cp_all_gather_merge, cp_split


def _context_parallel_group():
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    return ps.get_context_parallel_group()


class ContextParallelDotProductAttention(MegatronModule):
    """Drop-in ``core_attention`` of Megatron's local spec under context parallelism (see the module docstring).

    Inputs: ``query`` ``[sq, b, np, hn]``, ``key``/``value`` ``[sq, b, ng, hn]`` with ``sq = S / CP`` (this rank's
    two chunks), ``attention_mask`` either ``[.., S, S]`` (the whole row's mask, True = masked: its rows are cut to
    the local queries here) or ``[.., sq, S]`` (already cut), or None (causal from the chunk layout).
    Output: ``[sq, b, np * hn]`` for the local queries, like ``DotProductAttention``.
    """

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection: Any = None) -> None:
        super().__init__(config=config)
        # lazy: megatron-core is heavy (seconds)
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        # Megatron's attention on the gathered keys/values: itself it sees no context parallelism
        local_config = copy.copy(config)
        local_config.context_parallel_size = 1
        self.local = DotProductAttention(local_config, layer_number, attn_mask_type, attention_type,
                                         attention_dropout=attention_dropout, softmax_scale=softmax_scale,
                                         pg_collection=pg_collection)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], attn_mask_type=None, attention_bias=None,
                packed_seq_params=None) -> torch.Tensor:
        if packed_seq_params is not None:
            raise NotImplementedError(
                "packed (THD) sequences under context parallelism need Transformer Engine's attention: set "
                "trainer.sequence_packing=false (token-budget micro-batches work with parallel.context_parallel)")
        group = _context_parallel_group()
        cp_size = torch.distributed.get_world_size(group)
        cp_rank = torch.distributed.get_rank(group)
        local_len = query.shape[0]
        full_len = local_len * cp_size
        key = cp_all_gather_merge(key, group, dim=0)  # [S, b, ng, hn] in sequence order
        value = cp_all_gather_merge(value, group, dim=0)
        mask = self._local_mask(attention_mask, full_len, local_len, cp_size, cp_rank, query.device)
        return self.local(query, key, value, mask, attn_mask_type=attn_mask_type, attention_bias=attention_bias)

    @staticmethod
    def _local_mask(mask: Optional[torch.Tensor], full_len: int, local_len: int, cp_size: int, cp_rank: int,
                    device: torch.device) -> torch.Tensor:
        """``[.., sq, S]`` bool (True = masked): the local queries' rows of the whole row's mask."""
        if mask is None:  # causal over global positions: query at position p sees keys 0..p
            positions = torch.arange(full_len, device=device)
            query_pos = cp_split(positions, cp_size, cp_rank, dim=0)
            return (positions.unsqueeze(0) > query_pos.unsqueeze(1)).view(1, 1, local_len, full_len)
        if mask.shape[-1] != full_len:
            raise ValueError(f"attention mask of shape {tuple(mask.shape)} under context parallelism: its last "
                             f"dimension must be the whole row's length {full_len} (CP={cp_size} x {local_len})")
        if mask.shape[-2] == full_len and full_len != local_len:
            return cp_split(mask, cp_size, cp_rank, dim=mask.dim() - 2)
        if mask.shape[-2] != local_len:
            raise ValueError(f"attention mask of shape {tuple(mask.shape)}: its query dimension must be {full_len} "
                             f"(the whole row) or {local_len} (this rank's chunks)")
        return mask
