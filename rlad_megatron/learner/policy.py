"""A Megatron policy: model chunks (student: DDP-wrapped, with an optimizer; teacher: frozen) and the two things the
trainer asks of them, both through Megatron's forward-backward schedule so pipeline parallelism works:

- ``token_logprobs(batch)``: no-grad log-probs of every next token (old policy, teacher, probes);
- ``train_step(batch, loss_fn)``: forward/backward over micro-batches and one optimizer step, skipped when the loss
  or a gradient is not finite.

Per-token values exist on the last pipeline stage only (that is where the logits are); the loss lives there too.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.distributed as dist

from rlad_megatron.device import collective_device
from rlad_megatron.learner.sequences import SequenceBatch

# loss_fn(logprobs [b, L-1] with grad, entropy [b, L-1] or None, micro_batch) -> (loss share, metrics)
LossFn = Callable[[torch.Tensor, torch.Tensor | None, SequenceBatch], tuple[torch.Tensor, dict]]


def causal_inputs(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position_ids [B, L], attention_mask [1, 1, L, L])`` for right-padded sequences (True = masked)."""
    batch, length = tokens.shape
    positions = torch.arange(length, device=tokens.device).unsqueeze(0).expand(batch, -1)
    mask = torch.ones(1, 1, length, length, dtype=torch.bool, device=tokens.device).triu(diagonal=1)
    return positions, mask


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
                 with_entropy: bool = False) -> None:
        self.chunks = model_chunks
        self.vocab_size = vocab_size
        self.optimizer = optimizer
        self.with_entropy = with_entropy

    # ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _groups():
        from megatron.core import parallel_state as ps

        tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
        return ps, tp_group

    def _run(self, batch: SequenceBatch, micro_batch_size: int, forward_only: bool,
             loss_fn: LossFn | None, scale: float) -> list[dict]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        from rlad_megatron.logprobs import vocab_parallel_token_logprobs

        ps, tp_group = self._groups()
        n = len(batch)
        micro = [batch.select(slice(i, min(i + micro_batch_size, n))) for i in range(0, n, micro_batch_size)]
        if any(len(m) != micro_batch_size for m in micro):
            raise ValueError(
                f"batch of {n} sequences does not split into micro-batches of {micro_batch_size}: make the "
                "per-rank batch a multiple of trainer.micro_batch_size"
            )
        want_entropy = self.with_entropy and loss_fn is not None

        def forward_step(data_iterator, model):
            mb: SequenceBatch = next(data_iterator)
            positions, mask = causal_inputs(mb.tokens)
            output = model(mb.tokens, positions, mask)

            def loss_func(logits: torch.Tensor):
                targets = mb.tokens[:, 1:]
                result = vocab_parallel_token_logprobs(
                    logits[:, :-1], targets, tp_group=tp_group, vocab_size=self.vocab_size,
                    return_entropy=want_entropy,
                )
                logprobs, entropy = result if want_entropy else (result, None)
                if loss_fn is None:
                    return logprobs.sum() * 0.0, {"logprobs": logprobs.detach()}
                loss, metrics = loss_fn(logprobs, entropy, mb)
                # Megatron divides by the number of micro-batches and DDP averages over data-parallel ranks; the
                # loss share already has the global denominator, so undo both to get exactly its gradient.
                return loss * scale, {"metrics": metrics, "loss": loss.detach().clone()}

            return output, loss_func

        config = self.chunks[0].config if hasattr(self.chunks[0], "config") else None
        seq_length = batch.tokens.shape[1]
        if config is not None:
            config.seq_length = seq_length
        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro) if len(self.chunks) == 1 else [iter(micro) for _ in self.chunks],
            model=self.chunks,
            num_microbatches=len(micro),
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            forward_only=forward_only,
        )

    # ---------------------------------------------------------------------------------------------------------
    def token_logprobs(self, batch: SequenceBatch, micro_batch_size: int) -> torch.Tensor | None:
        """``[B, L-1]`` float32 log-probs of ``batch.tokens[:, 1:]`` (no grad). None off the last pipeline stage."""
        ps, _ = self._groups()
        for chunk in self.chunks:
            chunk.eval()
        try:
            with torch.no_grad():
                outputs = self._run(batch, micro_batch_size, True, None, 1.0)
        finally:
            for chunk in self.chunks:
                chunk.train(self.optimizer is not None)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return torch.cat([o["logprobs"] for o in outputs], dim=0)

    def train_step(self, batch: SequenceBatch, loss_fn: LossFn, micro_batch_size: int) -> StepResult:
        """Forward/backward over ``batch`` in micro-batches, then one optimizer step unless something is not
        finite (then the gradients are dropped and ``applied`` is False). Collective over the whole world."""
        if self.optimizer is None:
            raise RuntimeError("train_step on a policy without an optimizer (the teacher is frozen)")
        ps, _ = self._groups()
        num_micro = len(batch) // micro_batch_size
        scale = float(num_micro * ps.get_data_parallel_world_size())
        for chunk in self.chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        moe_tracking = _moe_tracker_reset(self.chunks)
        outputs = self._run(batch, micro_batch_size, False, loss_fn, scale)
        moe = _moe_metrics(num_micro) if moe_tracking else {}
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
            return StepResult(False, math.nan, [o["metrics"] for o in outputs], moe)
        ok, grad_norm, _ = self.optimizer.step()
        grad_norm = float(grad_norm) if grad_norm is not None else math.nan
        if not ok or not math.isfinite(grad_norm):
            return StepResult(False, grad_norm, [o["metrics"] for o in outputs], moe)
        return StepResult(True, grad_norm, [o["metrics"] for o in outputs], moe)

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
    from megatron.core.transformer.moe import moe_utils

    moe_utils.clear_aux_losses_tracker()
    return True


def _moe_metrics(num_micro: int) -> dict:
    """Collective: the tracked auxiliary losses reduced over pipeline stages and data-parallel ranks, per
    micro-batch and averaged over the MoE layers (as megatron's own ``track_moe_metrics`` logs them)."""
    from megatron.core.transformer.moe import moe_utils

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
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
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
