"""Three pools planned together: the learner's GPUs, the rollout engines' (``rollout.placement: disaggregated``) and
the teacher's (``teacher.placement: separate``): each pool's GPU memory, and a throughput balance that proposes how
many GPUs each pool gets so that none waits long.

    plans = pool_memory(config, student=s, teacher=t, layout=PoolLayout(8, 0, 8), gpu="h200")   # one plan per pool
    costs = estimate_costs(config, student=s, teacher=t, gpu="h200")     # or measured_costs(metrics rows, layout)
    best = propose(config, 16, costs, step_work(config), replica=...)    # layouts by predicted step time
    print(describe_balance(best[:3]))                                    # each pool's expected idle fraction

The balance models one step from per-token costs (seconds of one GPU per token): generation (decode), the teacher's
prefill, the learner's passes (training forward/backward, forward-only old-policy / reference / colocated teacher
passes). A pool's busy time per step is its tokens x cost / its GPUs; a pool on the learner's GPUs (colocated
engine, colocated teacher) adds its time to the learner's. The step time follows the schedule the trainer runs
(docs/async_rollouts.md, docs/large_models.md):

- asynchronous rollouts, teacher pool apart: batch t+1 is generated while the learner trains on batch t, then
  scored by the teacher pool, and must be scored before the learner's step t+1 trains; with one batch ahead this
  gives ``S = max(L, R, T, (R + T + L) / 2)`` (L, R, T: learner, rollout, teacher busy seconds);
- asynchronous rollouts, teacher with the learner: ``S = max(L, R)``;
- synchronous: the phases follow each other, except that a teacher pool apart scores while the learner computes
  its forward-only passes: ``S = L + R_apart + max(0, T - F)`` (F: the learner's forward-only seconds).

Each pool's idle fraction is ``1 - busy / S``. The FLOP-based cost estimate uses stated efficiencies (ours, not
measured on a GPU here): training at 35% of the GPU's bf16 peak, prefill at 45%, decoding bound by reading the
weights (and the KV cache) once per decode step for all the sequences an engine decodes together.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Iterable

from rlad_megatron.config import RunConfig, required_inputs, teacher_pool, teacher_use
from rlad_megatron.memory_plan.arithmetic import (
    device_params, fused_logits_bytes, layer_activation_bytes, logits_bytes, param_counts,
)
from rlad_megatron.memory_plan.plan import (
    DTYPE_BYTES, FUSED_TILE_ELEMENTS, GIB, LOGPROB_CHUNK_ELEMENTS, RUNTIME_RESERVE_GIB, MemoryPlan, Term, engine_runtime_bytes,
    forward_tokens, gpu_memory_gib, plan_memory,
)
from rlad_megatron.placement import ModelShape

#: bf16 dense peak (TFLOP/s) and HBM bandwidth (TB/s) of the GPUs the plan knows (vendor data sheets, SXM).
GPU_PEAK_TFLOPS: dict[str, float] = {"h100": 989.0, "h200": 989.0}
GPU_HBM_TBPS: dict[str, float] = {"h100": 3.35, "h200": 4.8}
#: Efficiencies of the estimate (ours): model FLOPs over peak in training and in prefill; bandwidth used in decode.
TRAIN_MFU, PREFILL_MFU, DECODE_BANDWIDTH = 0.35, 0.45, 0.7
#: The expected filling of the length limits (ours): responses half of max_new_tokens, prompts half of theirs.
RESPONSE_FILL, PROMPT_FILL = 0.5, 0.5
#: Sequences one vLLM engine decodes together at most (VLLMEngineConfig.max_num_seqs).
ENGINE_MAX_SEQS = 256
POOLS = ("learner", "rollout", "teacher")


@dataclasses.dataclass(frozen=True)
class PoolLayout:
    """GPUs of each pool; 0: the pool lives on the learner's GPUs (colocated), or the run has no such pool."""

    learner: int
    rollout: int = 0
    teacher: int = 0

    @property
    def total(self) -> int:
        return self.learner + self.rollout + self.teacher


@dataclasses.dataclass(frozen=True)
class PoolCosts:
    """Seconds of one GPU (or, on CPU, one core's process) per token of each pool's work."""

    generation: float
    """Per generated token."""
    teacher: float
    """Per sequence token (prompt + response) the teacher scores."""
    learner: float
    """Per sequence token of the learner's passes (training and forward-only), without a colocated teacher's."""
    learner_forward_share: float = 0.0
    """The share of the learner's time in forward-only passes (what a teacher pool apart overlaps in sync mode)."""
    source: str = "estimated"


@dataclasses.dataclass(frozen=True)
class StepWork:
    """Tokens of one step (all replicas together)."""

    generated_tokens: float
    sequence_tokens: float


@dataclasses.dataclass(frozen=True)
class BalancePrediction:
    layout: PoolLayout
    busy_s: dict[str, float]
    """Seconds each pool computes per step (the pools this run has)."""
    step_s: float
    apart: dict[str, bool]
    """Whether each pool has GPUs of its own."""

    @property
    def idle(self) -> dict[str, float]:
        return {p: (1.0 - b / self.step_s if self.step_s > 0 else 0.0) for p, b in self.busy_s.items()}

    def describe(self) -> str:
        parts = []
        for pool, busy in self.busy_s.items():
            gpus = getattr(self.layout, pool) if self.apart[pool] else "on the learner's"
            parts.append(f"{pool} {gpus} GPUs busy {busy:.3g} s idle {self.idle[pool]:.0%}")
        return f"step {self.step_s:.3g} s: " + "; ".join(parts)


def step_work(config: RunConfig) -> StepWork:
    """Expected tokens of a step from the length limits (RESPONSE_FILL, PROMPT_FILL)."""
    sequences = config.data.prompts_per_step * config.rollout.group_size
    response = RESPONSE_FILL * config.rollout.max_new_tokens
    return StepWork(sequences * response, sequences * (response + PROMPT_FILL * config.data.max_prompt_tokens))


def _rollout_apart(config: RunConfig) -> bool:
    return config.rollout.placement == "disaggregated"


def _uses_teacher(config: RunConfig) -> bool:
    return teacher_use(config.loss) == "logprobs"


def _asynchronous(config: RunConfig) -> bool:
    return _rollout_apart(config) and config.rollout.mode == "async" and config.rollout.max_staleness >= 1


def predict(config: RunConfig, layout: PoolLayout, costs: PoolCosts, work: StepWork) -> BalancePrediction:
    """The step time and each pool's busy seconds of ``config`` on ``layout`` (see the module docstring)."""
    if layout.learner < 1:
        raise ValueError(f"the learner needs at least one GPU, got {layout}")
    rollout_apart = _rollout_apart(config) and layout.rollout > 0
    teacher_apart = teacher_pool(config) != "none" and layout.teacher > 0
    rollout = work.generated_tokens * costs.generation / (layout.rollout if rollout_apart else layout.learner)
    learner_own = work.sequence_tokens * costs.learner / layout.learner
    busy = {"learner": learner_own, "rollout": rollout}
    if _uses_teacher(config):
        busy["teacher"] = work.sequence_tokens * costs.teacher / (layout.teacher if teacher_apart else layout.learner)
    teacher = busy.get("teacher", 0.0)
    learner = learner_own + (0.0 if rollout_apart else rollout) + (teacher if not teacher_apart else 0.0)
    busy["learner"] = learner
    if _asynchronous(config) and rollout_apart:
        step = max(learner, rollout, teacher, (rollout + teacher + learner) / 2) if teacher_apart \
            else max(learner, rollout)
    else:
        forward = costs.learner_forward_share * learner_own
        step = learner + (rollout if rollout_apart else 0.0) + (max(0.0, teacher - forward) if teacher_apart else 0.0)
    apart = {"learner": True, "rollout": rollout_apart, "teacher": teacher_apart}
    return BalancePrediction(layout, busy, step, {p: apart[p] for p in busy})


def candidate_layouts(config: RunConfig, total: int) -> Iterable[PoolLayout]:
    """Every split of ``total`` GPUs the run's settings allow: learner GPUs in whole replicas whose data parallelism
    divides the prompts, rollout GPUs (disaggregated) dividing the prompts, teacher GPUs (a Megatron pool) in whole
    replicas with its expert parallelism, or one engine per learner replica (a vLLM teacher)."""
    p, t = config.parallel, config.teacher
    replica = p.tensor_parallel * p.pipeline_parallel * p.context_parallel
    prompts = config.data.prompts_per_step
    pool = teacher_pool(config)
    for rollout in (range(1, total) if _rollout_apart(config) else [0]):
        if rollout and prompts % rollout:
            continue
        teachers: Iterable[int] = [0]
        if pool == "megatron":
            step = t.tensor_parallel * t.pipeline_parallel
            teachers = [n for n in range(step, total, step) if (n // t.pipeline_parallel) % t.expert_parallel == 0]
        elif pool == "vllm":  # one teacher engine per learner replica
            teachers = [n for n in range(1, total) if total - rollout - n == n * replica]
        for teacher in teachers:
            learner = total - rollout - teacher
            if learner < replica or learner % replica or prompts % (learner // replica):
                continue
            yield PoolLayout(learner, rollout, teacher)


def propose(config: RunConfig, total: int, costs: PoolCosts, work: StepWork) -> list[BalancePrediction]:
    """The layouts of ``total`` GPUs, fastest predicted step first (ties: the least idle GPU time)."""
    found = [predict(config, layout, costs, work) for layout in candidate_layouts(config, total)]

    def idle_gpu_seconds(b: BalancePrediction) -> float:
        return sum((b.step_s - busy) * (getattr(b.layout, pool) if b.apart[pool] else 0)
                   for pool, busy in b.busy_s.items())

    return sorted(found, key=lambda b: (round(b.step_s, 9), idle_gpu_seconds(b)))


def describe_balance(config: RunConfig, predictions: list[BalancePrediction], costs: PoolCosts,
                     current: BalancePrediction | None = None) -> str:
    """The balance as the recipe CLI prints it."""
    lines = [f"throughput balance ({costs.source} costs per token: generation {costs.generation:.3g} s, teacher "
             f"prefill {costs.teacher:.3g} s, learner {costs.learner:.3g} s, per GPU)"]
    if current is not None:
        lines.append(f"  this layout (learner {current.layout.learner}, rollout {current.layout.rollout or '-'}, "
                     f"teacher {current.layout.teacher or '-'} GPUs): {current.describe()}")
    others = [b for b in predictions if current is None or b.layout != current.layout]
    if current is not None and predictions and predictions[0].layout == current.layout:
        lines.append("  this layout is the fastest split the settings allow")
    for rank, b in enumerate(others, 1):
        lines.append(f"  proposal {rank}: learner {b.layout.learner}, rollout {b.layout.rollout or '-'}, teacher "
                     f"{b.layout.teacher or '-'} GPUs: {b.describe()}")
    if not others:
        lines.append("  no other split of these GPUs fits the run's settings (whole replicas, prompts dealt evenly)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ cost estimates
def _active_params(shape: ModelShape) -> float:
    """Parameters one token multiplies (the output layer, attention and MLP; the routed experts it is sent to)."""
    counts = param_counts(shape)
    experts = counts.layer_experts * shape.moe_top_k / shape.num_experts if shape.is_moe else 0.0
    output = counts.output or counts.embedding
    return output + shape.num_layers * (counts.layer_dense + experts)


def _attention_flops(shape: ModelShape, context: float) -> float:
    """Forward attention FLOPs per token at an average causal context ``context`` (scores and their weighting)."""
    return 4.0 * shape.num_layers * context * shape.num_heads * shape.head_dim_or_default


def _gpu_specs(gpu: str) -> tuple[float, float]:
    name = str(gpu).lower()
    if name not in GPU_PEAK_TFLOPS:
        raise ValueError(f"no throughput figures for GPU {gpu!r}: choose one of {sorted(GPU_PEAK_TFLOPS)}")
    return GPU_PEAK_TFLOPS[name] * 1e12, GPU_HBM_TBPS[name] * 1e12


def estimate_costs(config: RunConfig, *, student: ModelShape, teacher: ModelShape | None, gpu: str,
                   engines: int = 1) -> PoolCosts:
    """Per-token costs from FLOPs and bytes (``engines``: rollout engines sharing the step's sequences)."""
    peak, bandwidth = _gpu_specs(gpu)
    c = config
    context = PROMPT_FILL * c.data.max_prompt_tokens + RESPONSE_FILL * c.rollout.max_new_tokens
    forward = 2 * _active_params(student) + _attention_flops(student, context / 2)
    passes = 3.0 + (1.0 if c.parallel.recompute == "full" else 0.0)  # forward + backward (2x) + a recomputation
    needs = required_inputs(c.loss)
    extra = (1.0 if c.trainer.updates_per_batch > 1 and "old_logprobs" in needs else 0.0) + (
        1.0 if "ref_logprobs" in needs else 0.0)  # forward-only passes: old policy, reference
    learner = forward * (passes + extra) / (peak * TRAIN_MFU)
    teacher_cost = 0.0  # a colocated teacher's time is added to the learner's by predict()
    if teacher is not None and _uses_teacher(c):
        teacher_cost = (2 * _active_params(teacher) + _attention_flops(teacher, context / 2)) / (peak * PREFILL_MFU)
    sequences = c.data.prompts_per_step * c.rollout.group_size / max(1, engines)
    together = min(ENGINE_MAX_SEQS, max(1.0, sequences))
    weights = param_counts(student).total * DTYPE_BYTES[c.rollout.dtype]
    kv_per_token = (2 * student.num_layers * student.num_kv_heads * student.head_dim_or_default
                    * DTYPE_BYTES[c.rollout.dtype])
    decode_step = (weights + together * context * kv_per_token) / (bandwidth * DECODE_BANDWIDTH)
    generation = max(decode_step / together, forward / (peak * PREFILL_MFU))
    return PoolCosts(generation, teacher_cost, learner, extra / (passes + extra), f"estimated ({str(gpu).upper()})")


def measured_costs(rows: list[dict], layout: PoolLayout, *, warmup: int = 1) -> tuple[PoolCosts, StepWork]:
    """Per-token costs and step work measured in a run's ``metrics.jsonl`` rows (means after ``warmup`` steps):
    each pool's busy seconds (``timeline/*``) x its GPUs (processes on CPU) over its tokens."""
    measured = [r for r in rows if r["step"] > warmup] or rows

    def m(key: str) -> float:  # per step, over the measured steps together (robust to one slow step)
        return statistics.fmean(float(r.get(key, 0.0)) for r in measured)

    generated, sequence = m("rollout/generated_tokens"), m("rollout/sequence_tokens")
    rollout_gpus = layout.rollout or layout.learner
    teacher_gpus = layout.teacher or layout.learner
    learner_own = m("timeline/learner_busy")
    if not layout.rollout:
        learner_own -= m("timeline/rollout_busy")
    if not layout.teacher:
        learner_own -= m("timeline/teacher_busy")
    forward = m("time/old_logprobs")
    costs = PoolCosts(generation=m("timeline/rollout_busy") * rollout_gpus / generated,
                      teacher=m("timeline/teacher_busy") * teacher_gpus / sequence,
                      learner=max(0.0, learner_own) * layout.learner / sequence,
                      learner_forward_share=forward / learner_own if learner_own > 0 else 0.0,
                      source="measured")
    return costs, StepWork(generated, sequence)


# --------------------------------------------------------------------------------------------- memory by pool
def pool_memory(config: RunConfig, *, student: ModelShape, teacher: ModelShape | None, layout: PoolLayout,
                gpu: str | float | None, fused_attention: bool = True,
                runtime_reserve_gib: float = RUNTIME_RESERVE_GIB, engine_runtime_gib: float | None = None,
                chunk_elements: int = LOGPROB_CHUNK_ELEMENTS) -> dict[str, MemoryPlan]:
    """One GPU of each pool: the learner's (``plan_memory``: the student, a colocated engine and teacher), a rollout
    engine's GPU (disaggregated) and a teacher pool's GPU (separate)."""
    c, p = config, config.parallel
    dp = layout.learner // (p.tensor_parallel * p.pipeline_parallel * p.context_parallel)
    plans = {"learner": plan_memory(c, student=student, teacher=teacher, dp=dp, gpu=gpu,
                                    fused_attention=fused_attention, runtime_reserve_gib=runtime_reserve_gib,
                                    engine_runtime_gib=engine_runtime_gib, chunk_elements=chunk_elements)}
    gib, name = gpu_memory_gib(gpu)
    reserve = [Term("CUDA context, NCCL, fragmentation", int(runtime_reserve_gib * GIB), "resident")] \
        if runtime_reserve_gib else []
    if _rollout_apart(c) and layout.rollout:
        plans["rollout"] = MemoryPlan(_engine_terms(c, student, "student", engine_runtime_gib) + reserve, gib, name)
    pool = teacher_pool(c)
    if pool == "vllm" and teacher is not None:
        plans["teacher"] = MemoryPlan(_engine_terms(c, teacher, "teacher", engine_runtime_gib) + reserve, gib, name)
    elif pool == "megatron" and teacher is not None:
        plans["teacher"] = MemoryPlan(_megatron_teacher_terms(c, teacher, fused_attention, chunk_elements) + reserve,
                                      gib, name)
    return plans


def _engine_terms(c: RunConfig, model: ModelShape, role: str, runtime_gib: float | None) -> list[Term]:
    weights = param_counts(model).total * DTYPE_BYTES[c.rollout.dtype]
    terms = [Term(f"{role} engine weights", weights, "resident", f"{model.name}, TP=1, {c.rollout.dtype}"),
             Term(f"{role} engine KV cache", c.rollout.kv_cache_mb << 20, "resident",
                  "rollout.kv_cache_mb (alone on its GPU vLLM may take more)")]
    runtime = engine_runtime_bytes(model, 1, c.rollout.dtype) if runtime_gib is None else int(runtime_gib * GIB)
    if runtime:
        terms.append(Term(f"{role} engine runtime", runtime, "resident", "profile-run activations, sampler, CUDA "
                                                                        "graphs (estimate)"))
    return terms


def _megatron_teacher_terms(c: RunConfig, teacher: ModelShape, fused_attention: bool,
                            chunk_elements: int) -> list[Term]:
    t, p = c.teacher, c.parallel
    wbytes = DTYPE_BYTES[c.model.params_dtype]
    params = device_params(teacher, tp=t.tensor_parallel, pp=t.pipeline_parallel, ep=t.expert_parallel,
                           first=p.teacher_first_stage_layers, last=p.teacher_last_stage_layers)
    tokens = forward_tokens(c)
    longest = c.data.max_prompt_tokens + c.rollout.max_new_tokens
    sp = p.sequence_parallel and t.tensor_parallel > 1
    layer = layer_activation_bytes(teacher, tokens, tp=t.tensor_parallel, sp=sp, dtype_bytes=wbytes,
                                   sequence_length=longest, fused_attention=fused_attention)["layer"]
    if c.trainer.fused_logprobs is not False:  # the teacher rank scores from hidden states, as the learner does
        logits = fused_logits_bytes(teacher.vocab_size, tokens, tp=t.tensor_parallel, sp=sp,
                                    hidden=teacher.hidden_size, dtype_bytes=wbytes, backward=False,
                                    chunk_elements=chunk_elements, tile_elements=FUSED_TILE_ELEMENTS)
    else:
        logits = logits_bytes(teacher.vocab_size, tokens, tp=t.tensor_parallel, dtype_bytes=wbytes, backward=False,
                              chunk_elements=chunk_elements)
    return [Term("teacher weights", params.total * wbytes, "resident",
                 f"TP={t.tensor_parallel} x PP={t.pipeline_parallel}, experts / EP={t.expert_parallel}"),
            Term("scoring working set (one layer)", layer, "score", f"{tokens} tokens per forward micro-batch"),
            Term("scoring logits", logits, "score")]
