"""The memory plan's arithmetic: parameter counts and their per-GPU shards, saved activations, logits (bytes).

Pure functions of a :class:`rlad_megatron.placement.ModelShape` and the layout; the plan (``plan.py``) adds them up.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlad_megatron.config import ConfigError
from rlad_megatron.placement import ModelShape

@dataclass(frozen=True)
class ParamCounts:
    """A model's parameters, split the way parallelism splits them."""

    embedding: int
    """Input embedding (vocab x hidden)."""
    output: int
    """Output layer (0 when tied to the embedding)."""
    layer_dense: int
    """One layer's tensor-parallel weights: attention, dense MLP (or shared expert), router; norms included."""
    layer_experts: int
    """One layer's routed experts (expert-parallel, not tensor-parallel)."""
    num_layers: int
    final_norm: int

    @property
    def total(self) -> int:
        return (self.embedding + self.output + self.final_norm
                + self.num_layers * (self.layer_dense + self.layer_experts))


def param_counts(shape: ModelShape, vocab: int | None = None) -> ParamCounts:
    """Parameter counts of ``shape`` (``vocab``: rows of the embedding, default the checkpoint's vocab size)."""
    if not shape.vocab_size and vocab is None:
        raise ConfigError(f"memory plan: the shape of {shape.name} has no vocab_size; give it (config.json's "
                          "vocab_size) to size the embedding and the logits")
    v = vocab or shape.vocab_size
    h, hd = shape.hidden_size, shape.head_dim_or_default
    q, kv = shape.num_heads * hd, shape.num_kv_heads * hd
    attention = h * (q + 2 * kv) + q * h + (2 * hd if shape.qk_norm else 0)
    norms = 2 * h
    if shape.is_moe:
        experts = shape.num_experts * 3 * h * shape.moe_intermediate_size
        mlp = shape.num_experts * h  # router
        if shape.shared_expert_intermediate_size:
            mlp += 3 * h * shape.shared_expert_intermediate_size + h  # shared expert and its gate
    else:
        experts, mlp = 0, 3 * h * shape.intermediate_size
    return ParamCounts(embedding=v * h, output=0 if shape.tie_word_embeddings else v * h,
                       layer_dense=attention + mlp + norms, layer_experts=experts,
                       num_layers=shape.num_layers, final_norm=h)


def padded_vocab(vocab: int, tp: int, divisor: int = 128) -> int:
    """Megatron's embedding rows: ``vocab`` rounded up to a multiple of ``divisor * tp``."""
    multiple = divisor * tp
    return -(-vocab // multiple) * multiple


def stage_layers(shape: ModelShape, pp: int, first: int | None = None, last: int | None = None) -> list[int]:
    from rlad_megatron.models.layout import pipeline_stage_layers  # lazy: torch stays out of the plan

    return pipeline_stage_layers(shape.num_layers, pp, first, last)


@dataclass(frozen=True)
class DeviceParams:
    """Parameters one GPU holds: the pipeline stage with the most, split by TP (dense) and EP (experts)."""

    dense: int
    experts: int

    @property
    def total(self) -> int:
        return self.dense + self.experts


def device_params(shape: ModelShape, *, tp: int, pp: int = 1, ep: int = 1, first: int | None = None,
                  last: int | None = None) -> DeviceParams:
    """Per-GPU parameters of the heaviest pipeline stage (first stage: + embedding, last: + output layer)."""
    counts = param_counts(shape, padded_vocab(shape.vocab_size, tp) if shape.vocab_size else None)
    stages = stage_layers(shape, pp, first, last)
    best = DeviceParams(0, 0)
    for i, layers in enumerate(stages):
        dense = layers * counts.layer_dense // tp
        if i == 0:
            dense += counts.embedding // tp
        if i == len(stages) - 1:
            dense += (counts.output or (counts.embedding if pp > 1 else 0)) // tp + counts.final_norm
        here = DeviceParams(dense, layers * counts.layer_experts // ep)
        best = max(best, here, key=lambda d: d.total)
    return best


def layer_activation_bytes(shape: ModelShape, tokens: int, *, tp: int, sp: bool, dtype_bytes: int,
                           sequence_length: int, fused_attention: bool, context_parallel: int = 1) -> dict[str, int]:
    """Bytes autograd keeps for one layer's backward, for ``tokens`` tokens on this GPU (``sequence_length``: the
    padded row length on this GPU, for the ``[b, heads, s, s]`` scores of an unfused attention).

    ``context_parallel`` > 1 with the unfused attention (``models.cp_attention``, the local spec): the local
    queries' scores span the whole row (``[b, heads, s, CP x s]``) and the all-gathered keys and values of the
    whole row are kept. TE's fused CP attention keeps neither.

    MoE: each token is processed by ``top_k`` experts; with expert parallelism the routed copies move between GPUs
    but average the same per GPU, so EP does not change this count.

    Returns ``{"layer": ..., "scores": ..., "input": ...}``: the whole layer, its attention-scores part (what
    selective recomputation drops) and the layer's input (what full recomputation keeps per checkpointed chunk).
    """
    h, hd = shape.hidden_size, shape.head_dim_or_default
    q = shape.num_heads * hd // tp
    kv = max(shape.num_kv_heads * hd // tp, hd)  # TP above the KV heads: each rank still holds one KV head
    hidden = h // tp if sp else h  # norm and linear inputs: sequence-sharded with SP, replicated without
    # input norm in, QKV in, pre-MLP norm in, MLP in; Q, K (roped) and V; attention output (o_proj in); QK-norm ins
    elements = 4 * hidden + q + 2 * kv + q + ((q + kv) if shape.qk_norm else 0)
    if shape.is_moe:
        k, fe = shape.moe_top_k, shape.moe_intermediate_size
        # router logits (fp32, counted as 2 elements of bf16), then per routed copy of a token: its hidden state
        # (permuted), gate+up (2 fe) and the activation (fe); the combine keeps the expert outputs (h)
        elements += 2 * shape.num_experts + k * (2 * h + 3 * fe)
        if shape.shared_expert_intermediate_size:
            elements += 3 * shape.shared_expert_intermediate_size // tp
    else:
        elements += 3 * shape.intermediate_size // tp  # gate+up output (2f), SwiGLU output (f)
    layer = tokens * elements * dtype_bytes
    scores = 0
    if not fused_attention:  # softmax output, and the dropout's output that the context matmul keeps
        rows = max(1, tokens // max(1, sequence_length))
        cp = max(1, context_parallel)
        scores = 2 * rows * (shape.num_heads // tp) * sequence_length * sequence_length * cp * dtype_bytes
        layer += tokens * 2 * kv * (cp - 1) * dtype_bytes  # the other CP ranks' keys and values, gathered
    return {"layer": layer + scores, "scores": scores, "input": tokens * hidden * dtype_bytes}


def training_activation_bytes(shape: ModelShape, tokens: int, *, tp: int, sp: bool, dtype_bytes: int,
                              sequence_length: int, fused_attention: bool, recompute: str,
                              recompute_num_layers: int, layers: int, in_flight: int = 1,
                              context_parallel: int = 1) -> int:
    """Activations held by one pipeline stage of ``layers`` layers at its peak: what each of ``in_flight``
    micro-batches keeps for its backward (1F1B: the first of PP stages holds PP of them) + the temporaries of one
    layer's backward (with full recomputation: the one chunk rebuilt for its backward)."""
    one = layer_activation_bytes(shape, tokens, tp=tp, sp=sp, dtype_bytes=dtype_bytes,
                                 sequence_length=sequence_length, fused_attention=fused_attention,
                                 context_parallel=context_parallel)
    if recompute == "full":
        n = max(1, recompute_num_layers)
        kept, working = -(-layers // n) * one["input"], n * one["layer"]  # chunk inputs; one chunk rebuilt
    elif recompute == "selective":  # the scores of one layer are rebuilt for its backward
        kept, working = layers * (one["layer"] - one["scores"]), one["scores"] + one["layer"]
    else:
        kept, working = layers * one["layer"], one["layer"]
    return kept * in_flight + working


def logits_bytes(vocab: int, tokens: int, *, tp: int, dtype_bytes: int, backward: bool, chunk_elements: int) -> int:
    """The output layer's logits ``[tokens, V/TP]`` (and their gradient in a training pass) + one fp32 chunk of the
    log-prob kernel."""
    local = padded_vocab(vocab, tp) // tp
    return tokens * local * dtype_bytes * (2 if backward else 1) + min(chunk_elements, tokens * local) * 4


def fused_logits_bytes(vocab: int, tokens: int, *, tp: int, sp: bool, hidden: int, dtype_bytes: int, backward: bool,
                       chunk_elements: int, tile_elements: int) -> int:
    """The fused head's working set (``trainer.fused_logprobs``; ``rlad_megatron.logprobs.fused``), which never
    holds the logits: one tile of them (``tile_elements`` of ``[rows, V/TP]``, forward or backward) in the parameter
    dtype + the float32 work on a cache-sized block of it (the block, its log-softmax or exp, and the softmax
    weights: three of ``chunk_elements``); under sequence parallelism the hidden states ``[tokens, H]`` gathered over
    TP; a training pass adds the float32 sum of dL/dh over the vocabulary blocks ``[tokens, H]``. The weight's
    gradient goes into the gradient buffer (counted with the weights)."""
    local = padded_vocab(vocab, tp) // tp
    tile = min(tile_elements, tokens * local)
    total = tile * dtype_bytes + 3 * min(chunk_elements, tile) * 4
    if sp and tp > 1:
        total += tokens * hidden * dtype_bytes
    if backward:
        total += tokens * hidden * 4
    return total



#: Bytes per (position, id) of a teacher's top-k signal as the batch carries it: an int32 id + a float32 log-prob.
TOPK_SIGNAL_BYTES = 8
#: Bytes per (position, id) of the student's top-k log-probs in a training micro-batch: the id as an int64 target of
#: the log-prob pass, its float32 log-prob and gradient, and the loss's float32 work on it (the bucketed
#: distributions and their gradient, about four more of ``[tokens, k]``). An estimate.
TOPK_TRAIN_BYTES = 8 + 4 + 4 + 16


def topk_signal_bytes(tokens: int, k: int) -> int:
    """A teacher's top-k ids and log-probs ``[tokens, k]`` (``loss.topk_kl``), held from the teacher's pass to the
    end of the step."""
    return tokens * k * TOPK_SIGNAL_BYTES


def topk_train_bytes(tokens: int, k: int) -> int:
    """The student's ``k`` extra targets per position in one training micro-batch of ``tokens`` (the logits'
    gradient is the one of the sampled token's pass: the ids are extra targets of the same pass)."""
    return tokens * k * TOPK_TRAIN_BYTES
