"""Expert parallelism (MoE, EP > 1) inside the learner: the two things the micro-batches need for it.

1. Common shapes over the expert-parallel group. Megatron's allgather token dispatcher (the one that runs on gloo:
   it has no all-to-all) gathers every MoE layer's hidden states over the EP group with ``all_gather_into_tensor``,
   which needs the same token count on every rank. The EP group spans data-parallel ranks, whose micro-batches
   differ: token-budget micro-batches are cut from each rank's own lengths, the fixed path pads to each rank's own
   longest, balanced data parallelism deals unequal counts. So before a pass, every rank of the group agrees on the
   number of micro-batches and, per micro-batch index, on the largest rows x width: each micro-batch is right-padded
   to that (extra rows and columns of token 0, outside every sequence) and missing ones become filler micro-batches
   of that shape. Causal attention and token-wise (dropless) routing leave every real position's output unchanged.
2. The router's load-balancing loss over real tokens only. Megatron computes it over every position it is given; the
   padding (ours, and the per-rank padding the trainer always had) would then add layout-dependent terms. Training
   passes give the MoE layers megatron's ``padding_mask`` (True = padding), so the loss and its gradient see the
   sequences' tokens only, at any EP size and any micro-batch layout; a micro-batch with no real token (a filler)
   contributes exactly zero (megatron 0.16.1 divides 0 by 0 there: :func:`_guard_empty_aux_loss`).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from rlad_megatron.device import collective_device
from rlad_megatron.learner.batching import filler_micro_batch
from rlad_megatron.learner.context_parallel import cp_split
from rlad_megatron.learner.micro_batch import MicroBatch, causal_mask
from rlad_megatron.learner.sequences import SequenceBatch


def is_moe(chunks: list[torch.nn.Module]) -> bool:
    config = getattr(chunks[0], "config", None)
    return bool(getattr(config, "num_moe_experts", None))


def expert_parallel_group(chunks: list[torch.nn.Module]):
    """The group whose ranks exchange tokens in every MoE layer (EP x expert-TP), or None when there is nothing to
    agree on (a dense model, or EP = expert TP = 1)."""
    if not is_moe(chunks):
        return None
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    group = ps.get_expert_tensor_and_model_parallel_group()
    return group if group is not None and dist.get_world_size(group) > 1 else None


def common_micro_batch_shapes(micro: list[MicroBatch], batch: SequenceBatch, chunks: list[torch.nn.Module]
                              ) -> list[MicroBatch]:
    """``micro`` with every micro-batch's ``[rows, width]`` equal across the expert-parallel group, and the same
    count there (filler micro-batches added). Unchanged for dense models and at EP = 1. Collective over that
    group."""
    group = expert_parallel_group(chunks)
    if group is None:
        return micro

    device = collective_device(group)
    count = torch.tensor([len(micro)], dtype=torch.long, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX, group=group)
    shapes = torch.zeros(int(count), 2, dtype=torch.long, device=device)
    for i, mb in enumerate(micro):
        shapes[i, 0], shapes[i, 1] = mb.tokens.shape[0], mb.tokens.shape[1]
    dist.all_reduce(shapes, op=dist.ReduceOp.MAX, group=group)
    out = []
    for i, (rows, width) in enumerate(shapes.tolist()):
        mb = micro[i] if i < len(micro) else filler_micro_batch(batch)
        out.append(pad_micro_batch(mb, rows, width))
    return out


def pad_micro_batch(mb: MicroBatch, rows: int, width: int) -> MicroBatch:
    """``mb`` right-padded to ``[rows, width]`` tokens (token 0); its sequences, their rows and the mapping of the
    model's outputs back to them are unchanged (:meth:`MicroBatch.unpack` reads only its own sequences)."""
    r, w = mb.tokens.shape
    if (r, w) == (rows, width):
        return mb
    if r > rows or w > width:
        raise ValueError(f"pad_micro_batch: [{r}, {w}] does not fit into [{rows}, {width}]")
    tokens = torch.zeros(rows, width, dtype=mb.tokens.dtype)
    tokens[:r, :w] = mb.tokens
    # positions go on counting past a row's end (any value would do: nothing real attends to the padding)
    positions = torch.arange(width).unsqueeze(0).expand(rows, -1).clone()
    positions[:r, :w] = mb.position_ids.expand(r, -1)
    mask = mb.attention_mask
    if mask is not None:
        # the old block as it was (block-diagonal when packed); new positions see everything before them
        grown = causal_mask(width)
        grown[..., :w, :w] = mask
        mask = grown
    params = mb.packed_seq_params
    if params is not None:  # THD (Transformer Engine): the added tail is one more segment of its own
        params = _thd_with_tail(params, w, width)
    return dataclasses.replace(mb, tokens=tokens, position_ids=positions, attention_mask=mask,
                               packed_seq_params=params)


def _thd_with_tail(params, old_width: int, width: int):
    cu = params.cu_seqlens_q
    if width > old_width:
        cu = torch.cat([cu, torch.tensor([width], dtype=cu.dtype)])
    longest = int((cu[1:] - cu[:-1]).max())
    return dataclasses.replace(params, cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu,
                               cu_seqlens_kv_padded=cu, max_seqlen_q=longest, max_seqlen_kv=longest)


def real_positions(mb: MicroBatch) -> torch.Tensor:
    """``[R, W]`` bool: True at the row positions that hold a token of one of ``mb``'s sequences."""
    rows, width = mb.tokens.shape
    real = torch.zeros(rows, width, dtype=torch.bool)
    n = len(mb)
    if n == 0:
        return real
    if mb.gather_rows is None:  # sequence j is row j from position 0
        lengths = mb.sequences.sequence_lengths().clamp(max=width)
        real[:n] = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        return real
    # packed: sequence j starts at (gather_rows[j, 0], gather_cols[j, 0]) and is valid.sum() + 1 tokens long
    starts, lengths = mb.gather_cols[:, 0], mb.valid.sum(dim=1) + 1
    pos = torch.arange(width).unsqueeze(0)
    inside = (pos >= starts.unsqueeze(1)) & (pos < (starts + lengths).unsqueeze(1))  # [n, W]
    for j in range(n):
        real[int(mb.gather_rows[j, 0])] |= inside[j]
    return real


def router_padding_kwargs(mb: MicroBatch, model: torch.nn.Module, training: bool, cp_rows=None) -> dict:
    """Extra keyword arguments of the model call for one micro-batch: ``padding_mask`` (True = padding) for a MoE
    model in a training pass (where the router's load-balancing loss exists), else nothing. ``mb`` is on its
    device already; ``cp_rows``: its context-parallel view (``learner.context_parallel``), whose two chunks of each
    row the mask then covers (the CP padding is padding too)."""
    config = getattr(model, "config", None)
    if not training or not getattr(config, "num_moe_experts", None):
        return {}
    _guard_empty_aux_loss()
    padding = ~real_positions(mb).to(mb.tokens.device)
    if cp_rows is not None:
        padding = torch.nn.functional.pad(padding, (0, cp_rows.padded - cp_rows.width), value=True)
        padding = cp_split(padding, cp_rows.cp_size, cp_rows.cp_rank)
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    tp = ps.get_tensor_model_parallel_world_size()
    if getattr(config, "sequence_parallel", False) and tp > 1 and not ps.is_pipeline_first_stage():
        # megatron splits the mask over the sequence-parallel ranks with the embeddings, i.e. on the first stage
        # only; later stages get their slice of the sequence here
        chunk = padding.shape[1] // tp
        rank = ps.get_tensor_model_parallel_rank()
        padding = padding[:, rank * chunk:(rank + 1) * chunk].contiguous()
    return {"padding_mask": padding}


_GUARDED = False


def _guard_empty_aux_loss() -> None:
    """megatron 0.16.1's load-balancing loss with a padding mask divides by the number of real tokens, squared:
    0/0 = NaN (in the loss and in every gradient) for a micro-batch that is all padding. Counting such a
    micro-batch as one token makes its loss what it is, exactly 0 (it routes no real token anywhere)."""
    global _GUARDED
    if _GUARDED:
        return
    from megatron.core.transformer.moe import router  # lazy: megatron-core is heavy (seconds)

    original = router.get_tokens_per_expert_and_token_count

    def guarded(routing_map, reduce_group, topk=None, with_padding_mask=False):
        per_expert, local, total = original(routing_map, reduce_group, topk=topk,
                                            with_padding_mask=with_padding_mask)
        if with_padding_mask:
            total = torch.clamp(total, min=1)
        return per_expert, local, total

    router.get_tokens_per_expert_and_token_count = guarded
    _GUARDED = True
