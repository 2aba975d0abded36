"""A Megatron policy: model chunks (student: DDP-wrapped, with an optimizer; teacher: frozen) and the two things the
trainer asks of them, both through Megatron's forward-backward schedule so pipeline parallelism works:

- ``token_logprobs(batch)``: no-grad log-probs of every next token (old policy, teacher, probes);
- ``train_step(batch, loss_fn)``: forward/backward over micro-batches and one optimizer step, skipped when the loss
  or a gradient is not finite.

Per-token values exist on the last pipeline stage only (that is where the logits are); the loss lives there too.
With ``fused_logprobs`` the last stage never builds the logits: the model hands back its final hidden states and
the fused kernel computes the log-probs (and entropy) from them chunk by chunk (``learner/output_head.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rlad_megatron.device import collective_device, rank_device
from rlad_megatron.learner.batching import (
    MicroBatch,
    MicroBatching,
    as_micro_batching,
    build_micro_batches,
    filler_micro_batch,
    scatter_token_values,
)
from rlad_megatron.learner.context_parallel import context_parallel_rows, cp_loss_scale, cp_row_width
from rlad_megatron.learner.expert_parallel import common_micro_batch_shapes, router_padding_kwargs
from rlad_megatron.learner.output_head import hidden_states_out, use_fused_logprobs
from rlad_megatron.learner.sequences import SequenceBatch, default_pad_multiple
from rlad_megatron.logprobs import (
    fused_token_logprobs, fused_topk, vocab_parallel_token_logprobs, vocab_parallel_topk,
)

# loss_fn(logprobs [b, L-1] with grad, entropy [b, L-1] or None, micro_batch) -> (loss share, metrics); when the
# micro-batch carries a teacher's top-k ids (``teacher_topk_ids``), also ``topk_logprobs=`` [b, L-1, k] with grad:
# the student's log-probs at those ids.
LossFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclasses.dataclass
class StepResult:
    applied: bool
    """False when the step was skipped (non-finite loss or gradient)."""
    grad_norm: float
    metrics: list[dict]
    """Per micro-batch metric dicts returned by ``loss_fn`` (last pipeline stage; empty elsewhere)."""
    moe: dict = dataclasses.field(default_factory=dict)
    """MoE router metrics on every rank (``moe/load_balancing_loss``: the un-weighted auxiliary loss, averaged
    over micro-batches and MoE layers); empty for dense models."""


class MegatronPolicy:
    """Model chunks of one policy under the current Megatron parallel state."""

    def __init__(self, model_chunks: list[torch.nn.Module], vocab_size: int, *, optimizer: Any = None,
                 with_entropy: bool = False, fused_logprobs: bool | str = "auto") -> None:
        self.chunks = model_chunks
        self.vocab_size = vocab_size
        self.optimizer = optimizer
        self.with_entropy = with_entropy
        self.fused = use_fused_logprobs(fused_logprobs, model_chunks)
        """Log-probs straight from the hidden states (``trainer.fused_logprobs``), no logits."""

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _groups():
        from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

        tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
        return ps, tp_group

    def _length_multiple(self) -> int:
        """Widths of budget/packed micro-batches round up to this: the CUDA pad multiple, and the TP size under
        sequence parallelism (the sequence dimension is split over the TP ranks)."""
        ps, _ = self._groups()
        config = getattr(self.chunks[0], "config", None)
        sp = bool(getattr(config, "sequence_parallel", False))
        return math.lcm(default_pad_multiple(), ps.get_tensor_model_parallel_world_size() if sp else 1)

    @functools.cached_property
    def _uses_thd(self) -> bool:
        """Packed rows go to Transformer Engine's attention as THD (cu_seqlens) when the model's attention is TE's;
        otherwise a block-diagonal mask does the same on the local/torch attention. (The module walk runs once: the
        chunks' layer types never change.)"""
        return any(type(m).__name__ == "TEDotProductAttention" for chunk in self.chunks for m in chunk.modules())

    def micro_batches(self, batch: SequenceBatch, batching: "int | MicroBatching") -> list[MicroBatch]:
        """``batch`` cut into this policy's micro-batches (widths rounded for sequence parallelism)."""
        batching = as_micro_batching(batching)
        if not batching.fixed:
            batching = batching.with_length_multiple(self._length_multiple())
        micro = build_micro_batches(batch, batching, thd=batching.packing and self._uses_thd)
        return common_micro_batch_shapes(micro, batch, self.chunks)  # MoE at EP > 1: one shape per index

    def _run(self, batch: SequenceBatch, micro: list[MicroBatch], forward_only: bool,
             loss_fn: LossFn | None, scale: float, topk: int | None = None, topk_tokens: bool = False) -> list[dict]:
        from megatron.core.pipeline_parallel import get_forward_backward_func  # lazy: megatron-core is heavy (seconds)

        ps, tp_group = self._groups()
        want_entropy = self.with_entropy and loss_fn is not None
        device = rank_device()  # cuda:LOCAL_RANK in an NCCL job, else the CPU (rlad_megatron/device.py)
        length_multiple = self._length_multiple()

        def forward_step(data_iterator, model):
            mb: MicroBatch = next(data_iterator).to(device)  # the one host->device move of a micro-batch
            # context parallelism: this rank's two chunks of each row in, whole rows of log-probs out (None: CP=1)
            cp_rows = context_parallel_rows(mb, length_multiple, te_attention=self._uses_thd)
            moe = router_padding_kwargs(mb, model, loss_fn is not None, cp_rows)  # MoE: balance over real tokens
            with hidden_states_out(model) if self.fused else contextlib.nullcontext() as head:
                if cp_rows is not None:
                    output = model(cp_rows.tokens, cp_rows.position_ids, cp_rows.attention_mask, **moe)
                elif mb.packed_seq_params is not None:
                    output = model(mb.tokens, mb.position_ids, mb.attention_mask,
                                   packed_seq_params=mb.packed_seq_params, **moe)
                else:
                    output = model(mb.tokens, mb.position_ids, mb.attention_mask, **moe)

            # Training with a teacher's top-k (``SequenceBatch.teacher_topk_ids``): the student's log-probs at those
            # ids too, as K more targets per position of the same pass ([R, W-1, 1 + k]: the sampled token first).
            extra_ids = None
            if loss_fn is not None and mb.sequences.teacher_topk_ids is not None:
                extra_ids = mb.pack(mb.sequences.teacher_topk_ids.long())
                extra_ids = cp_rows.split(extra_ids) if cp_rows is not None else extra_ids

            def with_extra(targets: torch.Tensor, pad: int) -> torch.Tensor:
                if extra_ids is None:
                    return targets
                return torch.cat([targets.unsqueeze(-1), F.pad(extra_ids, (0, 0, 0, pad))], dim=-1)

            def token_values(output: torch.Tensor):
                """Log-probs (and entropy) ``[R, W-1]`` (CP: ``[R, W/CP]``) of the next tokens (with top-k ids:
                log-probs ``[R, W-1, 1 + k]``)."""
                if head is None:  # today's path: the logits [R, W, V/TP], then the vocab-parallel kernel
                    return vocab_parallel_token_logprobs(
                        output if cp_rows is not None else output[:, :-1],
                        with_extra(cp_rows.targets if cp_rows is not None else mb.tokens[:, 1:], 0),
                        tp_group=tp_group, vocab_size=self.vocab_size, return_entropy=want_entropy,
                    )
                # the hidden states [W(/TP), R, H]; every position gets a target (the last one a dummy, dropped)
                targets = (with_extra(cp_rows.targets, 0) if cp_rows is not None
                           else with_extra(F.pad(mb.tokens[:, 1:], (0, 1)), 1))
                result = fused_token_logprobs(
                    output, head.weight, targets.transpose(0, 1), tp_group=tp_group,
                    sequence_parallel=head.sequence_parallel, vocab_size=self.vocab_size,
                    return_entropy=want_entropy, accumulate_grad_into_main_grad=head.main_grad,
                )
                values = [v.transpose(0, 1) if cp_rows is not None else v.transpose(0, 1)[:, :-1]
                          for v in (result if want_entropy else (result,))]
                return tuple(values) if want_entropy else values[0]

            def topk_values(output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                """The ``topk`` most likely next tokens, ``([R, W-1, k] log-probs, [R, W-1, k] ids)``."""
                if head is None:
                    lp, ids = vocab_parallel_topk(output if cp_rows is not None else output[:, :-1], topk,
                                                  tp_group=tp_group, vocab_size=self.vocab_size)
                else:
                    lp, ids = (v.transpose(0, 1) for v in fused_topk(
                        output, head.weight, topk, tp_group=tp_group, sequence_parallel=head.sequence_parallel,
                        vocab_size=self.vocab_size))
                    lp, ids = (lp, ids) if cp_rows is not None else (lp[:, :-1], ids[:, :-1])
                if cp_rows is not None:
                    lp, ids = cp_rows.merge(lp), cp_rows.merge(ids)
                return mb.unpack(lp), mb.unpack(ids)

            def loss_func(output: torch.Tensor):
                if topk is not None:
                    lp, ids = topk_values(output)
                    out = {"topk": (lp, ids)}
                    if topk_tokens:  # the given tokens' log-probs from the same forward
                        values = token_values(output)
                        out["logprobs"] = mb.unpack(cp_rows.merge(values) if cp_rows is not None else values)
                    return lp.sum() * 0.0, out
                result = token_values(output)
                if cp_rows is not None:  # [R, W-1] on every CP rank, as without CP
                    result = tuple(map(cp_rows.merge, result)) if want_entropy else cp_rows.merge(result)
                row_logprobs, row_entropy = result if want_entropy else (result, None)
                # back to the micro-batch's own sequences, [n, T]: the loss never sees the packed/padded layout
                logprobs = mb.unpack(row_logprobs)
                entropy = None if row_entropy is None else mb.unpack(row_entropy)
                extra = {}
                if extra_ids is not None:  # [n, T, 1 + k] -> the sampled token's [n, T] and the top-k's [n, T, k]
                    logprobs, extra["topk_logprobs"] = logprobs[..., 0], logprobs[..., 1:]
                    row_logprobs = row_logprobs[..., 0]
                if loss_fn is None:
                    return row_logprobs.sum() * 0.0, {"logprobs": logprobs.detach()}
                if len(mb) == 0:  # a filler micro-batch (ranks run equal counts): contributes exactly nothing
                    zero = row_logprobs.sum() * 0.0
                    return zero, {"metrics": None, "loss": zero.detach().clone()}
                loss, metrics = loss_fn(logprobs, entropy, mb.sequences, **extra)
                # Megatron divides by the number of micro-batches and DDP averages over data-parallel ranks (x CP:
                # cp_loss_scale); the loss share already has the global denominator, so undo both to get exactly
                # its gradient.
                return loss * scale, {"metrics": metrics, "loss": loss.detach().clone()}

            return output, loss_func

        config = self.chunks[0].config if hasattr(self.chunks[0], "config") else None
        # the whole rows' width (padded for context parallelism: Megatron divides it by the CP size for the shapes
        # that pipeline stages exchange)
        seq_length = cp_row_width(max(m.width for m in micro), ps.get_context_parallel_world_size(),
                                  length_multiple)
        micro_batch_size = max(int(m.tokens.shape[0]) for m in micro)
        # Under pipeline parallelism the stages exchange activations of each micro-batch's own shape: Megatron
        # sends the shape first when variable_seq_lengths is on (only needed when the shapes differ).
        varying = len({tuple(m.tokens.shape) for m in micro}) > 1
        restore = None
        if config is not None:
            config.seq_length = seq_length
            if varying and ps.get_pipeline_model_parallel_world_size() > 1:
                restore = config.variable_seq_lengths
                config.variable_seq_lengths = True
        try:
            return get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(micro) if len(self.chunks) == 1 else [iter(micro) for _ in self.chunks],
                model=self.chunks,
                num_microbatches=len(micro),
                seq_length=seq_length,
                micro_batch_size=micro_batch_size,
                forward_only=forward_only,
            )
        finally:
            if restore is not None:
                config.variable_seq_lengths = restore

    # ---------------------------------------------------------------------------------------------------------
    def token_logprobs(self, batch: SequenceBatch, batching: "int | MicroBatching") -> torch.Tensor | None:
        """``[B, L-1]`` float32 log-probs of ``batch.tokens[:, 1:]`` (no grad). None off the last pipeline stage.
        ``batching``: a :class:`MicroBatching` (token budget, packing; then positions past a sequence's end are 0),
        or an int, the fixed layout's sequences per micro-batch."""
        ps, _ = self._groups()
        micro = self.micro_batches(batch, batching)
        if not micro:  # no sequence on this rank (balanced data parallelism can deal none to it)
            last = ps.is_pipeline_last_stage(ignore_virtual=True)
            return torch.zeros(0, batch.tokens.shape[1] - 1) if last else None
        outputs = self._forward_only(batch, micro)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return scatter_token_values([(m, o["logprobs"]) for m, o in zip(micro, outputs)], len(batch),
                                    batch.tokens.shape[1] - 1)

    def token_topk(self, batch: SequenceBatch, batching: "int | MicroBatching", k: int, *,
                   with_logprobs: bool = False) -> tuple[torch.Tensor, ...] | None:
        """The ``k`` most likely next tokens at every position (a teacher's top-k, no grad): ``(log-probs [B, L-1, k]
        float32, global token ids [B, L-1, k] int64)``, sorted by decreasing probability (the format of
        ``rlad_megatron.logprobs.vocab_parallel_topk``); positions past a sequence's end hold 0. None off the
        last pipeline stage. Micro-batches as :meth:`token_logprobs`. ``with_logprobs``: also :meth:`token_logprobs`'s
        ``[B, L-1]`` from the same forward pass, as a third element."""
        ps, _ = self._groups()
        micro = self.micro_batches(batch, batching)
        outputs = self._forward_only(batch, micro, topk=k, topk_tokens=with_logprobs) if micro else []
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        width, parts = batch.tokens.shape[1] - 1, [(m, o["topk"]) for m, o in zip(micro, outputs)]
        logprobs, ids = (torch.stack([scatter_token_values([(m, v[i][..., j]) for m, v in parts], len(batch), width)
                                      for j in range(k)], dim=-1) for i in (0, 1))
        if not with_logprobs:
            return logprobs.float(), ids.long()
        tokens = scatter_token_values([(m, o["logprobs"]) for m, o in zip(micro, outputs)], len(batch), width)
        return logprobs.float(), ids.long(), tokens.float()

    def _forward_only(self, batch: SequenceBatch, micro: list[MicroBatch], topk: int | None = None,
                      topk_tokens: bool = False) -> list[dict]:
        """``micro`` through the schedule without grad, the chunks in eval mode (then back)."""
        for chunk in self.chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                return self._run(batch, micro, True, None, 1.0, topk, topk_tokens)
        finally:
            for chunk in self.chunks:
                chunk.train(self.optimizer is not None)

    def train_step(self, batch: SequenceBatch, loss_fn: LossFn, batching: "int | MicroBatching") -> StepResult:
        """Forward/backward over ``batch`` in micro-batches, then one optimizer step unless something is not
        finite (then the gradients are dropped and ``applied`` is False). Collective over the whole world.

        With a token budget the number of micro-batches varies with the lengths: every data-parallel rank runs
        the largest count of any of them (filler micro-batches make up the difference), as the schedule and the
        gradient reduction expect the same number everywhere."""
        if self.optimizer is None:
            raise RuntimeError("train_step on a policy without an optimizer (the teacher is frozen)")
        ps, _ = self._groups()
        batching = as_micro_batching(batching)
        micro = self.micro_batches(batch, batching)
        if not batching.fixed:
            count = torch.tensor(len(micro), dtype=torch.long, device=collective_device(ps.get_data_parallel_group()))
            if ps.get_data_parallel_world_size() > 1:
                dist.all_reduce(count, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
            micro += [filler_micro_batch(batch, self._length_multiple())
                      for _ in range(max(int(count), 1) - len(micro))]
        num_micro = len(micro)
        scale = cp_loss_scale(num_micro, ps.get_data_parallel_world_size(), ps.get_context_parallel_world_size())
        for chunk in self.chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        moe_tracking = _moe_tracker_reset(self.chunks)
        outputs = self._run(batch, micro, False, loss_fn, scale)
        moe = _moe_metrics(num_micro) if moe_tracking else {}
        metrics = [o["metrics"] for o in outputs if o.get("metrics") is not None]
        finite = torch.tensor(1.0, device=collective_device())
        for out in outputs:
            if not torch.isfinite(out["loss"]).all():
                finite.zero_()
        for chunk in self.chunks:
            for buffer in getattr(chunk, "buffers", []):
                if not torch.isfinite(buffer.grad_data).all():
                    finite.zero_()
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            for chunk in self.chunks:
                chunk.zero_grad_buffer()
            self.optimizer.zero_grad()
            return StepResult(False, math.nan, metrics, moe)
        ok, grad_norm, _ = self.optimizer.step()
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if not ok or not math.isfinite(grad_norm):
            return StepResult(False, grad_norm, metrics, moe)
        return StepResult(True, grad_norm, metrics, moe)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def _moe_tracker_reset(chunks: list[torch.nn.Module]) -> bool:
    """Zero megatron's per-layer auxiliary-loss tracker before a MoE training step; False for dense models.
    (The load-balancing loss itself reaches the gradients inside the router, through megatron's
    ``MoEAuxLossAutoScaler``, weighted by ``moe_aux_loss_coeff`` = the checkpoint's ``router_aux_loss_coef``.)"""
    config = getattr(chunks[0], "config", None)
    if not getattr(config, "num_moe_experts", None):
        return False
    from megatron.core.transformer.moe import moe_utils  # lazy: megatron-core is heavy (seconds)

    moe_utils.clear_aux_losses_tracker()
    return True


def _moe_metrics(num_micro: int) -> dict:
    """Collective: the tracked auxiliary losses reduced over pipeline stages and data-parallel ranks, per
    micro-batch and averaged over the MoE layers (as megatron's own ``track_moe_metrics`` logs them)."""
    from megatron.core.transformer.moe import moe_utils  # lazy: megatron-core is heavy (seconds)

    tracker = moe_utils.get_moe_layer_wise_logging_tracker()
    names = sorted(tracker)
    moe_utils.reduce_aux_losses_tracker_across_ranks(names)
    out = {}
    for name in names:
        values = tracker[name]["values"].float() / num_micro
        out[f"moe/{name}"] = float(values.mean())
    moe_utils.clear_aux_losses_tracker()
    return out


def build_student(model_chunks: list[torch.nn.Module], optim: Any) -> tuple[list[torch.nn.Module], Any]:
    """Wrap the student's chunks in Megatron DDP and build its (distributed) Adam optimizer."""
    # lazy: megatron-core is heavy (seconds)
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    # lazy: megatron-core is heavy (seconds)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = model_chunks[0].config
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=optim.use_distributed_optimizer
    )
    wrapped = [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=(i > 0))
        for i, chunk in enumerate(model_chunks)
    ]
    bf16 = config.params_dtype == torch.bfloat16
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
            adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps,
            clip_grad=optim.clip_grad, use_distributed_optimizer=optim.use_distributed_optimizer,
            bf16=bf16, params_dtype=config.params_dtype,
        ),
        wrapped,
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [w.no_sync for w in wrapped] if len(wrapped) > 1 else wrapped[0].no_sync
    return wrapped, optimizer
