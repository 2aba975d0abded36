"""Measured CPU memory of the learner, to check the memory plan (``rlad_megatron.memory_plan``) against.

``peak_bytes(fn)`` runs ``fn`` under torch's profiler with memory profiling and replays every allocation and free
of torch's CPU allocator in time order: the peak of the running sum is the largest number of bytes ``fn`` had
allocated at once (above what existed before), and the final sum what it left allocated. Unlike the process RSS,
this sees only tensors, with no allocator caching or library noise, so a few-MB activation difference shows.

``measure_learner(...)`` (a body for ``run_distributed``) builds a Megatron student from a ``ModelArch`` the way
the trainer does (``build_model_chunks`` + ``build_student``: DDP with an fp32 gradient buffer, the distributed
Adam), and measures (a) what building it leaves allocated, (b) the first training step: one micro-batch through
Megatron's schedule with the trainer's log-probs (the fused head by default, else the logits and the
vocabulary-parallel kernel), then the optimizer step (which creates Adam's state), as peak and retained bytes.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


def peak_bytes(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """``(peak, retained, result)`` of the CPU tensor allocations made while ``fn()`` runs.

    Frees of memory allocated before ``fn`` started (garbage of earlier work collected meanwhile) are ignored, so
    the numbers are ``fn``'s own."""
    import gc

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events: list[tuple[int, int, int]] = []

    def walk(nodes) -> None:
        for node in nodes:
            if node.tag == torch._C._profiler._EventType.Allocation:
                fields = node.extra_fields
                if fields.device.type == "cpu":
                    events.append((node.start_time_ns, fields.alloc_size, fields.ptr))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    events.sort()
    live: dict[int, int] = {}
    running = peak = 0
    for _, size, ptr in events:
        if size > 0:
            live[ptr] = size
        elif ptr in live:
            size = -live.pop(ptr)
        else:
            continue  # allocated before fn started
        running += size
        peak = max(peak, running)
    return peak, running, result


def cuda_peak_bytes(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """``(peak, retained, result)`` of ``fn()`` on the current CUDA device (torch's allocator statistics)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, torch.cuda.memory_allocated() - base, result


def tiny_arch_config(*, layers: int = 4, hidden: int = 256, heads: int = 8, kv_heads: int = 4,
                     intermediate: int = 768, vocab: int = 4096, moe: dict[str, int] | None = None,
                     head_dim: int | None = None, max_positions: int = 4096) -> dict[str, Any]:
    """A Qwen3 (or Qwen3-MoE with ``moe``) ``config.json`` dict of the given shape (no weights needed)."""
    cfg: dict[str, Any] = dict(
        model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=vocab, hidden_size=hidden,
        intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim or hidden // heads, rms_norm_eps=1e-6, rope_theta=10000.0,
        max_position_embeddings=max_positions, tie_word_embeddings=False, hidden_act="silu")
    if moe:
        cfg.update(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], norm_topk_prob=True, **moe)
    return cfg


def measure_learner(hf_config: dict[str, Any], *, rows: int, seq: int, recompute: str = "none",
                    recompute_num_layers: int = 1, sequence_parallel: bool = False,
                    use_distributed_optimizer: bool = True, micro_batches: int = 1,
                    params_dtype: torch.dtype = torch.float32, fused_logprobs: bool = True) -> dict[str, Any]:
    """Build the student and run one training step on ``rows x seq`` tokens; bytes measured on this rank:
    ``build`` (left allocated by building model, DDP and optimizer), ``step_peak`` / ``step_retained`` (the first
    step, above what building left), ``loss`` (the first micro-batch's, on the last pipeline stage; else None),
    ``grads`` (this rank's gradient shards). ``micro_batches`` copies of the batch go through the schedule (with
    PP, 1F1B keeps up to PP of them in flight on the first stage). With CUDA the model lives on the GPU and the bytes
    are the allocator's (``cuda_peak_bytes``); on CPU the profiler's (``peak_bytes``). ``fused_logprobs``: the
    log-probs from the hidden states without logits, as the trainer computes them by default."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.policy import build_student
    from rlad_megatron.learner.output_head import hidden_states_out
    from rlad_megatron.logprobs import fused_token_logprobs, vocab_parallel_token_logprobs
    from rlad_megatron.models import build_model_chunks
    from rlad_megatron.models.builder import recompute_fields
    from rlad_megatron.models.hf_config import arch_from_hf_config

    arch = arch_from_hf_config(hf_config)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    measure = cuda_peak_bytes if cuda else peak_bytes

    def build():
        chunks = build_model_chunks(arch, params_dtype=params_dtype, sequence_parallel=sequence_parallel,
                                    perform_initialization=True, **recompute_fields(recompute, recompute_num_layers))
        return build_student(chunks, OptimConfig(lr=1e-3, use_distributed_optimizer=use_distributed_optimizer))

    build_peak, build_retained, (wrapped, optimizer) = measure(build)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, arch.vocab_size, (rows, seq), generator=g).to(device)
    positions = torch.arange(seq, device=device).unsqueeze(0).expand(rows, -1)
    mask = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool, device=device), diagonal=1)
    tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
    losses: list[float] = []

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        with hidden_states_out(model) if fused_logprobs else contextlib.nullcontext() as head:
            output = model(batch, positions, mask)

        def loss_func(logits):
            if head is not None:  # the hidden states [s(/TP), b, h]: the first s-1 positions' next tokens
                lp = fused_token_logprobs(logits, head.weight, torch.nn.functional.pad(batch[:, 1:], (0, 1)).t(),
                                          tp_group=tp_group, sequence_parallel=head.sequence_parallel,
                                          vocab_size=arch.vocab_size, accumulate_grad_into_main_grad=head.main_grad,
                                          ).t()[:, :-1]
            else:
                lp = vocab_parallel_token_logprobs(logits[:, :-1], batch[:, 1:], tp_group=tp_group,
                                                   vocab_size=arch.vocab_size)
            loss = -lp.mean()
            losses.append(float(loss))
            return loss, {}

        return output, loss_func

    def step():
        for w in wrapped:
            w.train()
            w.zero_grad_buffer()
        optimizer.zero_grad()
        chunk_config = wrapped[0].config
        chunk_config.seq_length = seq
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([tokens] * micro_batches),
                                    model=wrapped, num_microbatches=micro_batches, seq_length=seq,
                                    micro_batch_size=rows)
        optimizer.step()

    step_peak, step_retained, _ = measure(step)
    # the gradient buffer still holds this step's gradients (it is zeroed at the next step)
    grads = [p.main_grad.detach().cpu().clone() for p in wrapped[0].parameters()]
    params = sum(p.numel() for p in wrapped[0].parameters())
    return {"build": build_retained, "build_peak": build_peak, "step_peak": step_peak,
            "step_retained": step_retained, "params": params, "loss": losses[0] if losses else None,
            "grads": grads}
