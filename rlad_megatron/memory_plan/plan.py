"""The memory plan: each GPU's peak memory, by component, before a run is launched.

    plan = plan_memory(config, student=shape, teacher=teacher_shape, dp=8, gpu="h200")
    print(plan.describe())            # one line per component, the peak phase, and whether it fits
    plan.check()                      # MemoryPlanError naming the largest terms and settings that would fit

Everything is arithmetic on shapes (no torch, no hardware): the parameter counts of the student and the teacher
(dense or MoE), their shards under TP / PP / CP / EP and sequence parallelism, the optimizer's state (Adam: fp32
moments, an fp32 main copy of bf16 weights, sharded over data parallelism by the distributed optimizer; an fp32
gradient buffer: ``grad_reduce_in_fp32``), the activations of one micro-batch (its token budget, recomputation,
the attention kind), the vocabulary-parallel logits and their gradient, and the colocated engine (weights + KV
cache). The per-layer activation terms count the tensors autograd keeps for Megatron's layer (norm inputs, the
QKV/MLP inputs and outputs, attention scores when the attention is not fused), after Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models"), adapted to GQA, SwiGLU and QK-norm.

``arithmetic.py`` holds the counts, this module the terms of a run; ``advice.py`` the settings that would fit.
Peak = what stays resident all run + the largest of the phases that come and go (a training micro-batch, a
forward-only scoring micro-batch of the teacher / old / reference policy). Measured against CPU peaks in
``docs/memory_plan.md`` (``bench/memory_plan.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rlad_megatron.config import ConfigError, RunConfig, megatron_teacher, teacher_models, teacher_use
from rlad_megatron.memory_plan.advice import suggestions
from rlad_megatron.memory_plan.arithmetic import (
    device_params, fused_logits_bytes, layer_activation_bytes, logits_bytes, stage_layers, topk_signal_bytes,
    topk_train_bytes, training_activation_bytes,
)
from rlad_megatron.placement import ModelShape
from rlad_megatron.rollout.vllm_memory import estimated_runtime_bytes

GIB = 1 << 30

#: Memory of one GPU in GiB as torch reports it (``torch.cuda.get_device_properties(0).total_memory``): an H100
#: 80 GB has 79.6 GiB, an H200 141 GB about 139.8 GiB (the lent H200 shows "about 139 GiB").
GPU_MEMORY_GIB: dict[str, float] = {"h100": 79.6, "h200": 139.8}

#: CUDA context, NCCL buffers and the caching allocator's fragmentation, held back on every GPU (ours).
RUNTIME_RESERVE_GIB = 4.0
#: The least of the colocated engine's own working memory besides weights and KV cache. The plan counts
#: ``rollout.vllm_memory.estimated_runtime_bytes`` (vLLM's profile-run activations and sampler at the engine model's
#: widths, CUDA graphs, NCCL), never less than this: an estimate, not measured here (no vLLM on the lent GPU machine).
ENGINE_RUNTIME_GIB = 2.0
#: float32 elements of one log-prob chunk on a GPU (``rlad_megatron.logprobs.vocab_parallel.DEFAULT_CHUNK_ELEMENTS``).
LOGPROB_CHUNK_ELEMENTS = 1 << 24
#: logits elements of one tile of the fused head on a GPU
#: (``rlad_megatron.logprobs.fused.DEFAULT_FUSED_CHUNK_ELEMENTS``).
FUSED_TILE_ELEMENTS = 1 << 26

#: The phases that come and go (each on top of what is resident): a training micro-batch, a forward-only
#: micro-batch (teacher / reference / old-policy scoring), and generation by a sleeping engine.
PHASES = ("train", "score", "generate")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class MemoryPlanError(ConfigError):
    """The run does not fit the GPU memory; the message names the largest terms and settings that would fit."""


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    phase: str
    """"resident" (all run), "train" (a training micro-batch), "score" (a forward-only micro-batch) or
    "generate" (a sleeping engine, awake only to generate)."""
    detail: str = ""


@dataclass
class MemoryPlan:
    """Per-GPU memory by component; ``peak_bytes`` is resident + the largest phase."""

    terms: list[Term]
    gpu_gib: float | None
    gpu_name: str
    notes: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    def phase_bytes(self, phase: str) -> int:
        return sum(t.bytes for t in self.terms if t.phase == phase)

    @property
    def resident_bytes(self) -> int:
        return self.phase_bytes("resident")

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_bytes)  # the first of equals: "train"

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.phase_bytes(self.peak_phase)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def fits(self) -> bool:
        return self.gpu_gib is None or self.peak_gib <= self.gpu_gib

    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def largest(self, n: int = 3) -> list[Term]:
        """The largest terms of the peak (resident + the peak phase)."""
        live = [t for t in self.terms if t.phase in ("resident", self.peak_phase)]
        return sorted(live, key=lambda t: -t.bytes)[:n]

    def describe(self) -> str:
        lines = [f"memory plan per GPU ({self.gpu_name}" + (f", {self.gpu_gib:.1f} GiB)" if self.gpu_gib else ")")]
        for phase, title in (("resident", "resident all run"), ("train", "training micro-batch"),
                             ("score", "forward-only micro-batch"), ("generate", "generation (engine awake)")):
            terms = [t for t in self.terms if t.phase == phase]
            if not terms:
                continue
            lines.append(f"  {title}: {_size(self.phase_bytes(phase))}")
            for t in terms:
                lines.append(f"    {t.name:34s} {_size(t.bytes, 8)}" + (f"  ({t.detail})" if t.detail else ""))
        verdict = "" if self.gpu_gib is None else (" fits" if self.fits else f" DOES NOT FIT in {self.gpu_gib:.1f}")
        lines.append(f"  peak ({self.peak_phase} phase): {_size(self.peak_bytes)}{verdict}")
        lines.extend(f"  note: {n}" for n in self.notes)
        if not self.fits and self.suggestions:
            lines.append("  settings that would fit: " + "; ".join(self.suggestions))
        return "\n".join(lines)

    def check(self) -> "MemoryPlan":
        """Raise :class:`MemoryPlanError` unless the plan fits."""
        if self.fits:
            return self
        largest = ", ".join(f"{t.name} {t.bytes / GIB:.1f} GiB" for t in self.largest())
        fix = ("; ".join(self.suggestions) if self.suggestions
               else "none of the single changes tried (recomputation, token budget, KV cache, TP) is enough: "
                    "use more GPUs per replica (TP/PP) or a smaller model")
        raise MemoryPlanError(f"the run needs about {self.peak_gib:.1f} GiB per GPU at its peak ({self.peak_phase} "
                              f"phase) but the GPU ({self.gpu_name}) has {self.gpu_gib:.1f} GiB; largest terms: {largest}. "
                              f"Settings that would fit: {fix} (print the plan: python -m recipes NAME --plan)")


def _size(nbytes: int, width: int = 0) -> str:
    """GiB with two decimals (one for totals), MiB below 1 GiB (tiny CPU models)."""
    if nbytes >= GIB:
        return f"{nbytes / GIB:{width}.{2 if width else 1}f} GiB"
    return f"{nbytes / (1 << 20):{width}.1f} MiB"


def _count(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.2f}M"


def gpu_memory_gib(gpu: str | float | None) -> tuple[float | None, str]:
    """(GiB, name) of ``gpu``: "h100", "h200", a number of GiB, or None (no limit: print only)."""
    if gpu is None:
        return None, "no GPU limit"
    if isinstance(gpu, (int, float)) and not isinstance(gpu, bool):
        if gpu <= 0:
            raise ConfigError(f"GPU memory must be > 0 GiB, got {gpu}")
        return float(gpu), f"{gpu:g} GiB GPU"
    name = str(gpu).lower()
    if name in GPU_MEMORY_GIB:
        return GPU_MEMORY_GIB[name], name.upper()
    try:
        return gpu_memory_gib(float(name))
    except ValueError:
        raise ConfigError(f"GPU {gpu!r}: give one of {sorted(GPU_MEMORY_GIB)} or a size in GiB") from None


def train_tokens(config: RunConfig) -> int:
    """Tokens of the largest training micro-batch on one data-parallel rank: the token budget (at least one whole
    longest sequence), else micro_batch_size sequences padded to the longest possible one."""
    longest = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    budget = config.trainer.max_tokens_per_micro_batch
    return max(budget, longest) if budget else config.trainer.micro_batch_size * longest


def forward_tokens(config: RunConfig) -> int:
    """Tokens of the largest forward-only micro-batch (teacher / old / reference scoring)."""
    longest = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    budget = config.trainer.forward_tokens_per_micro_batch()
    return max(budget, longest) if budget else config.trainer.micro_batch_size * longest


def plan_memory(config: RunConfig, *, student: ModelShape,
                teacher: ModelShape | Sequence[ModelShape] | None = None, dp: int = 1,
                ep: int | None = None, teacher_ep: int | None = None, gpu: str | float | None = None, fused_attention: bool = True,
                runtime_reserve_gib: float = RUNTIME_RESERVE_GIB, engine_runtime_gib: float | None = None,
                chunk_elements: int = LOGPROB_CHUNK_ELEMENTS, tile_elements: int = FUSED_TILE_ELEMENTS,
                suggest: bool = True) -> MemoryPlan:
    """The per-GPU memory plan of ``config`` with these model shapes and ``dp`` data-parallel replicas.

    ``teacher``: the teacher's shape; with several teachers (``teacher.teachers``) the shapes of its Megatron
    teachers (``source: megatron``, in their order), every one counted (a vLLM teacher's engine is not).
    ``ep`` / ``teacher_ep``: expert-parallel sizes of a MoE student / teacher (None: ``parallel.expert_parallel``,
    the one size the trainer runs both with).
    ``fused_attention``: TE's flash attention (no ``[s, s]`` scores; GPU image) or Megatron's local attention.
    ``trainer.fused_logprobs`` (not false): the logits terms are the fused head's tiles (``tile_elements``), not the
    logits and their gradient.
    ``gpu``: "h100", "h200", a size in GiB, or None (no verdict). CPU runs: ``runtime_reserve_gib=0``,
    ``engine_runtime_gib=0``. ``engine_runtime_gib`` None: :func:`engine_runtime_bytes`.
    """
    c = config
    par = c.parallel
    ep = par.expert_parallel if ep is None else ep
    teacher_ep = par.expert_parallel if teacher_ep is None else teacher_ep
    tp, pp, cp = par.tensor_parallel, par.pipeline_parallel, par.context_parallel
    sp = par.sequence_parallel and tp > 1
    wbytes = DTYPE_BYTES[c.model.params_dtype]
    act = wbytes  # activations in the parameter dtype (bf16 autocast-free Megatron)
    gpu_gib, gpu_name = gpu_memory_gib(gpu)
    terms: list[Term] = []
    notes: list[str] = []

    # --- the student: weights, fp32 gradient buffer, Adam state (sharded over DP x CP by the distributed optimizer)
    sp_params = device_params(student, tp=tp, pp=pp, ep=ep, first=par.first_stage_layers, last=par.last_stage_layers)
    terms.append(Term("student weights", sp_params.total * wbytes, "resident",
                      f"{_count(sp_params.total)} params x {wbytes} B"))
    terms.append(Term("student gradients (fp32 buffer)", sp_params.total * 4, "resident"))
    adam = 8 + (4 if wbytes < 4 else 0)  # m, v (+ fp32 main weights of bf16 params)
    shard_dense = dp * cp if c.optim.use_distributed_optimizer else 1
    shard_experts = max(1, dp * cp * tp // ep) if c.optim.use_distributed_optimizer else 1
    opt = sp_params.dense * adam // shard_dense + sp_params.experts * adam // shard_experts
    terms.append(Term("student optimizer (Adam)", opt, "resident",
                      f"{adam} B/param" + (f" / {shard_dense} DP shards" if shard_dense > 1 else "")))

    # --- the teacher (Megatron, same TP/PP layout); several teachers: every Megatron one
    uses = teacher_use(c.loss)
    teacher_shapes = [] if teacher is None else [teacher] if isinstance(teacher, ModelShape) else list(teacher)
    several = c.teacher.several() and uses == "logprobs"
    megatron_names = [m.name for _, m in teacher_models(c) if m.source == "megatron"] if several else []
    if several and teacher_shapes and len(teacher_shapes) != len(megatron_names):
        raise ValueError(f"plan_memory: {len(megatron_names)} Megatron teachers in teacher.teachers "
                         f"({megatron_names}) but {len(teacher_shapes)} teacher shapes")
    # a teacher pool's GPUs are planned apart: memory_plan/pools.py
    counted = teacher_shapes if several else teacher_shapes[:1] if megatron_teacher(c) else []
    teacher = teacher_shapes[0] if teacher_shapes and not several else None  # the one teacher (sft's engine model)
    if uses == "logprobs" and not teacher_shapes and (megatron_names or not several):
        notes.append("teacher shape unknown: the teacher is not counted")
    for i, shape in enumerate(counted):
        tparams = device_params(shape, tp=tp, pp=pp, ep=teacher_ep, first=par.teacher_first_stage_layers,
                                last=par.teacher_last_stage_layers)
        detail = f"{_count(tparams.total)} params x {wbytes} B"
        if shape.is_moe and teacher_ep == 1:
            detail += "; experts are not TP-split: every GPU holds all of them (EP=1)"
        # teacher.offload: the frozen teacher waits in pinned host memory between scoring passes
        name = f"teacher weights ({megatron_names[i]})" if several else "teacher weights"
        terms.append(Term(name, tparams.total * wbytes, "score" if c.teacher.offload else "resident", detail))
    if several:
        if len(megatron_names) < len(c.teacher.teachers):
            notes.append("teacher.teachers with source=vllm: their scoring engines' weights and KV cache are not "
                         "counted")
    elif uses == "logprobs" and c.teacher.placement == "separate":
        notes.append("teacher.placement=separate: the teacher's GPUs are planned apart (memory_plan/pools.py)")
    elif uses == "logprobs" and c.teacher.source == "vllm":
        notes.append("teacher.source=vllm: its scoring engine's weights and KV cache are not counted")

    # --- the colocated rollout engine: the whole student at engine TP (no PP), its KV cache, its runtime
    if c.rollout.placement == "colocated":
        engine_model = teacher if uses == "samples" and teacher is not None else student
        ew = device_params(engine_model, tp=tp, pp=1, ep=1).total * DTYPE_BYTES[c.rollout.dtype]
        # a sleeping engine holds GPU memory only while it generates (weights woken for the sync, KV cache after)
        phase = "generate" if c.rollout.sleep_level else "resident"
        terms.append(Term("engine weights", ew, phase, f"{engine_model.name} at TP={tp}, {c.rollout.dtype}"))
        terms.append(Term("engine KV cache", c.rollout.kv_cache_mb << 20, phase, "rollout.kv_cache_mb"))
        runtime = engine_runtime_bytes(engine_model, tp, c.rollout.dtype) if engine_runtime_gib is None \
            else int(engine_runtime_gib * GIB)
        if runtime:
            terms.append(Term("engine runtime", runtime, phase, "profile-run activations, sampler, CUDA graphs, NCCL "
                                                               "(estimate)"))
    if runtime_reserve_gib:
        terms.append(Term("CUDA context, NCCL, fragmentation", int(runtime_reserve_gib * GIB), "resident"))

    # --- a training micro-batch of the student: the first pipeline stage holds PP micro-batches in flight, the last
    # one the logits and their gradient; the heaviest of the two is the peak
    longest = c.data.max_prompt_tokens + c.rollout.max_new_tokens
    tt = train_tokens(c)
    tokens = -(-tt // cp)
    stages = stage_layers(student, pp, par.first_stage_layers, par.last_stage_layers)
    fused = c.trainer.fused_logprobs is not False  # "auto" is on for the models planned here (no MTP layers)

    def logits_term(model: ModelShape, n: int, backward: bool) -> int:
        if fused:
            return fused_logits_bytes(model.vocab_size, n, tp=tp, sp=sp, hidden=model.hidden_size, dtype_bytes=act,
                                      backward=backward, chunk_elements=chunk_elements, tile_elements=tile_elements)
        return logits_bytes(model.vocab_size, n, tp=tp, dtype_bytes=act, backward=backward,
                            chunk_elements=chunk_elements)

    logits = logits_term(student, tokens, True)

    def stage_activations(layers: int, in_flight: int) -> int:
        return training_activation_bytes(student, tokens, tp=tp, sp=sp, dtype_bytes=act,
                                         sequence_length=-(-longest // cp), fused_attention=fused_attention,
                                         recompute=par.recompute, recompute_num_layers=par.recompute_num_layers,
                                         layers=layers, in_flight=in_flight, context_parallel=cp)

    acts = stage_activations(stages[-1], 1)
    where = f"{stages[-1]} layers"
    if pp > 1 and stage_activations(stages[0], pp) > acts + logits:
        acts = stage_activations(stages[0], pp) - logits  # shown net of the logits term below: the sum is the peak
        where = f"first stage: {stages[0]} layers x {pp} micro-batches in flight"
    elif pp > 1:
        where = f"last stage: {stages[-1]} layers"
    budget = (f"trainer.max_tokens_per_micro_batch={c.trainer.max_tokens_per_micro_batch}"
              if c.trainer.max_tokens_per_micro_batch else f"{c.trainer.micro_batch_size} x {longest} tokens")
    terms.append(Term("student activations", acts, "train",
                      f"{tt} tokens ({budget}){f' / CP={cp}' if cp > 1 else ''}, {where}, "
                      f"recompute={par.recompute}"))
    terms.append(Term("student logits + gradient", logits, "train",
                      "fused head: one tile of the logits" if fused else f"[{tokens}, V/{tp}]"))

    if c.loss.uses_topk():  # loss.topk_kl: the teacher's top-k per position, and the student's log-probs at them
        step_tokens = -(-c.data.prompts_per_step * c.rollout.group_size // dp) * longest
        terms.append(Term("teacher top-k signal", topk_signal_bytes(step_tokens, c.loss.topk_k), "resident",
                          f"[{step_tokens} tokens, loss.topk_k={c.loss.topk_k}] int32 ids + float32 log-probs"))
        terms.append(Term("student top-k log-probs", topk_train_bytes(tokens, c.loss.topk_k), "train",
                          f"{c.loss.topk_k} extra targets per position, their gradient and the loss's work"))

    # --- a forward-only micro-batch (teacher, old-policy or reference scoring): the larger of the models that score
    ft = -(-forward_tokens(c) // cp)
    scorers = [student] + counted

    def scoring(model: ModelShape) -> tuple[int, int]:
        one = layer_activation_bytes(model, ft, tp=tp, sp=sp, dtype_bytes=act, sequence_length=-(-longest // cp),
                                     fused_attention=fused_attention, context_parallel=cp)
        return one["layer"], logits_term(model, ft, False)

    scorer = max(scorers, key=lambda m: sum(scoring(m)))
    layer_bytes, scoring_logits = scoring(scorer)
    terms.append(Term("scoring working set (one layer)", layer_bytes, "score",
                      f"{scorer.name}, {ft} tokens per forward micro-batch"))
    terms.append(Term("scoring logits", scoring_logits, "score"))
    plan = MemoryPlan(terms=terms, gpu_gib=gpu_gib, gpu_name=gpu_name, notes=notes)
    if suggest and not plan.fits:
        shapes = dict(student=student, teacher=teacher_shapes if several else teacher, ep=ep, teacher_ep=teacher_ep,
                      gpu=gpu, fused_attention=fused_attention, runtime_reserve_gib=runtime_reserve_gib,
                      engine_runtime_gib=engine_runtime_gib, chunk_elements=chunk_elements,
                      tile_elements=tile_elements)

        def fits(changed: RunConfig, replicas: int) -> bool:
            try:
                return plan_memory(changed, dp=replicas, suggest=False, **shapes).fits
            except (ConfigError, ValueError):
                return False

        plan.suggestions = suggestions(c, dp, fits)
    return plan


ENGINE_TERMS: tuple[str, ...] = ("engine weights", "engine KV cache", "engine runtime")


def engine_runtime_bytes(model: ModelShape, tp: int, dtype: str) -> int:
    """The colocated engine's memory besides weights and KV cache, as vLLM's profiling counts it
    (``rollout.vllm_memory.estimated_runtime_bytes`` at the engine model's widths; at least ``ENGINE_RUNTIME_GIB``)."""
    widest = max(model.intermediate_size,
                 model.moe_intermediate_size * max(1, model.moe_top_k) + model.shared_expert_intermediate_size)
    estimate = estimated_runtime_bytes(hidden_size=model.hidden_size, intermediate_size=widest,
                                       vocab_size=model.vocab_size, tensor_parallel=tp, dtype_bytes=DTYPE_BYTES[dtype])
    return max(int(ENGINE_RUNTIME_GIB * GIB), estimate)


def engine_bytes(plan: MemoryPlan) -> int:
    """The colocated engine's share of the plan: its weights, KV cache and runtime (0 when disaggregated)."""
    return sum(t.bytes for t in plan.terms if t.name in ENGINE_TERMS)


def engine_memory_utilization(plan: MemoryPlan, total_gib: float | None = None) -> float:
    """vLLM's ``gpu_memory_utilization`` for the colocated engine: the fraction of the GPU's memory (``total_gib``,
    default the plan's GPU) that its weights, KV cache and runtime take in the plan, so that the engine reserves no
    more than the plan gave it and the learner's share stays free. vLLM sizes the KV cache as that share minus the
    weights and what its profiling measures besides (``rollout.vllm_memory.kv_cache_bytes``): the plan's KV cache
    when the engine's runtime is the plan's "engine runtime" term.

        plan = plan_memory(config, student=ModelShape.from_arch(arch), teacher=..., dp=dp, gpu=total_gib)
        utilization = engine_memory_utilization(plan)
    """
    total = total_gib if total_gib is not None else plan.gpu_gib
    if not total:
        raise ConfigError("engine_memory_utilization needs the GPU's memory: plan with gpu=... or give total_gib")
    share = engine_bytes(plan) / (total * GIB)
    if not 0 < share < 1:
        raise ConfigError(f"the colocated engine's planned memory ({engine_bytes(plan) / GIB:.1f} GiB) is not a "
                          f"fraction of the GPU's {total:.1f} GiB: lower rollout.kv_cache_mb")
    return share
