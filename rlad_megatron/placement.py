"""Where everything runs: learner TP/PP/DP, the teacher and the rollout engines on the allocated GPUs.

    plan = plan_placement(config, nodes=8, gpus_per_node=8, student=ModelShape.from_arch(arch))
    print(plan.describe())      # "64 GPUs (8 nodes x 8): learner TP=2 x PP=1 x DP=32 ..."

The job is one SPMD program (``torchrun`` on every node), so the world is ``nodes * gpus_per_node`` ranks:
- the learner holds ``world - rollout_gpus - teacher_gpus`` ranks, as DP replicas of ``TP x PP x CP`` GPUs each
  (context parallelism splits each sequence, not the batch: the batch arithmetic counts DP only);
- a Megatron teacher (``teacher.source=megatron``) lives on the learner's GPUs with the learner's TP/PP layout, or,
  with ``teacher.placement=separate``, on ``teacher_gpus = teacher.ranks`` GPUs of its own (the job's last ranks)
  with its own TP/PP/EP; a vLLM teacher shares the learner's process, or (separate) has one engine per learner
  replica on ``teacher_gpus`` GPUs of its own;
- rollout engines are colocated (one per DP replica, engine TP = learner TP, no GPUs of their own) or
  disaggregated (``rollout_gpus`` GPUs, ``rollout_gpus / rollout_tp`` engines).
Every check raises ``PlacementError`` that spells out the arithmetic and what to change. The recipes call this
before launching; the trainer can call it again at start-up with the real model shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlad_megatron.config import ConfigError, RunConfig, teacher_use


class PlacementError(ConfigError):
    """The requested layout does not fit the allocation or the model; the message shows the arithmetic."""


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of a model that constrain its parallel layout."""

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    hidden_size: int
    intermediate_size: int
    head_dim: int | None = None
    """None: hidden_size / num_heads (the HF default)."""
    # The fields below size the memory plan (rlad_megatron.memory_plan); 0 / False: unknown or absent.
    vocab_size: int = 0
    """Embedding rows of the checkpoint (0: unknown, the memory plan refuses to guess)."""
    tie_word_embeddings: bool = False
    """Input embedding and output layer share one matrix."""
    num_experts: int = 0
    """Routed experts per layer (0: a dense model)."""
    moe_top_k: int = 0
    """Experts per token."""
    moe_intermediate_size: int = 0
    """Width of one routed expert's MLP."""
    shared_expert_intermediate_size: int = 0
    """Width of the shared expert (Qwen2-MoE), 0: none."""
    qk_norm: bool = False
    """Per-head RMSNorm on queries and keys (Qwen3)."""

    @property
    def head_dim_or_default(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @classmethod
    def from_arch(cls, arch: Any, name: str = "model") -> "ModelShape":
        """From a :class:`rlad_megatron.models.hf_config.ModelArch` (or anything with its field names)."""
        return cls(name, arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.hidden_size,
                   arch.intermediate_size, _explicit_head_dim(arch), vocab_size=getattr(arch, "vocab_size", 0),
                   tie_word_embeddings=bool(getattr(arch, "tie_word_embeddings", False)),
                   num_experts=getattr(arch, "num_experts", 0), moe_top_k=getattr(arch, "moe_top_k", 0),
                   moe_intermediate_size=getattr(arch, "moe_intermediate_size", 0),
                   shared_expert_intermediate_size=getattr(arch, "shared_expert_intermediate_size", 0),
                   qk_norm=bool(getattr(arch, "qk_norm", False)))

    @classmethod
    def from_hf_dir(cls, path: str, name: str | None = None) -> "ModelShape":
        """Read ``config.json`` of a Hugging Face directory (through ``load_arch``)."""
        from rlad_megatron.models.hf_config import load_arch  # lazy: torch stays out of recipes and the plan

        return cls.from_arch(load_arch(path), name or path)


@dataclass(frozen=True)
class Placement:
    """A checked layout. ``learner_gpus = tp * pp * cp * dp``; ``world = learner_gpus + rollout_gpus + teacher_gpus``;
    torchrun starts :attr:`ranks_per_node` ranks on each node (the engines' GPUs are processes of their own)."""

    nodes: int
    gpus_per_node: int
    tp: int
    pp: int
    dp: int
    rollout: str
    """"colocated" or "disaggregated"."""
    rollout_gpus: int
    rollout_tp: int
    num_engines: int
    teacher: str
    """"none", "megatron" (on the learner's GPUs, learner layout) or "vllm"."""
    teacher_gpus: int
    cp: int = 1
    """Context-parallel size: each sequence split over ``cp`` ranks of a replica."""
    teacher_layout: tuple[int, int, int] = (1, 1, 1)
    """A separate Megatron teacher's (TP, PP, EP)."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def learner_gpus(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def engine_gpus(self) -> int:
        """GPUs of engine processes of their own (disaggregated rollout engines, a vLLM teacher pool's engines), on
        each node's last GPUs: they are not torchrun ranks (a Megatron teacher pool's GPUs are)."""
        return (0 if self.rollout == "colocated" else self.rollout_gpus) + (
            self.teacher_gpus if self.teacher == "vllm" else 0)

    @property
    def ranks_per_node(self) -> int:
        """torchrun processes per node: the node's GPUs less its even share of :attr:`engine_gpus`."""
        return self.gpus_per_node - self.engine_gpus // self.nodes

    def describe(self) -> str:
        """One line per component, for logs and the recipe CLI."""
        cp = f" x CP={self.cp}" if self.cp > 1 else ""
        lines = [f"{self.world_size} GPUs ({self.nodes} node(s) x {self.gpus_per_node}): learner TP={self.tp} x "
                 f"PP={self.pp}{cp} x DP={self.dp} on {self.learner_gpus} GPUs"]
        if self.rollout == "colocated":
            lines.append(f"rollout: {self.num_engines} colocated vLLM engine(s) (one per DP replica, TP={self.rollout_tp})")
        else:
            lines.append(f"rollout: {self.num_engines} vLLM engine(s) of TP={self.rollout_tp} on {self.rollout_gpus} "
                         "GPUs of their own")
        if self.teacher == "megatron" and self.teacher_gpus:
            ttp, tpp, tep = self.teacher_layout
            lines.append(f"teacher: frozen Megatron model on {self.teacher_gpus} GPUs of its own (the job's last "
                         f"{self.teacher_gpus} ranks): TP={ttp} x PP={tpp}, EP={tep}, "
                         f"{self.teacher_gpus // (ttp * tpp)} replica(s)")
        elif self.teacher == "megatron":
            lines.append(f"teacher: frozen Megatron model on the learner's GPUs (TP={self.tp} x PP={self.pp})")
        elif self.teacher == "vllm":
            where = (f"in {self.teacher_gpus} engine processes on GPUs of their own (one per learner replica)"
                     if self.teacher_gpus else "in the learner's processes")
            lines.append(f"teacher: vLLM scorer {where}")
        else:
            lines.append("teacher: none")
        if self.engine_gpus:
            lines.append(f"torchrun: {self.ranks_per_node} rank(s) per node; the engines run in processes of their "
                         f"own on each node's last {self.engine_gpus // self.nodes} GPU(s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class BatchLayout:
    """How one step's global batch splits over the data-parallel replicas and the updates of a step."""

    dp: int
    prompts_per_rank: int
    """``data.prompts_per_step / dp``: whole prompt groups on each replica."""
    sequences_per_rank: int
    """``prompts_per_rank x rollout.group_size``."""
    sequences_per_update: int
    """``sequences_per_rank / trainer.updates_per_batch``: a whole number of micro-batches."""


def batch_layout(config: RunConfig, dp: int) -> BatchLayout:
    """The one batch arithmetic (prompts / DP x G, split into updates of micro-batches), checked.

    Used by :func:`plan_placement` before launch and by the trainer at start-up with the real DP size. Raises
    :class:`PlacementError` showing the arithmetic and what to change.
    """
    _positive("data-parallel size", dp)
    prompts, group = config.data.prompts_per_step, config.rollout.group_size
    micro, updates = config.trainer.micro_batch_size, config.trainer.updates_per_batch
    if prompts % dp:
        raise PlacementError(f"data.prompts_per_step={prompts} prompts cannot be shared evenly by DP={dp} replicas "
                             f"({prompts} / {dp} = {prompts / dp:g}): use a multiple of {dp}")
    per_rank = prompts // dp
    if per_rank % updates:
        raise PlacementError(f"each of the DP={dp} replicas gets {prompts} / {dp} = {per_rank} prompts per step, "
                             f"which must be a multiple of trainer.updates_per_batch={updates} (each update takes "
                             "whole groups)")
    sequences = per_rank * group
    # With a token budget micro-batches are cut by tokens, not counted in sequences: no divisibility to check.
    if config.trainer.max_tokens_per_micro_batch is None and sequences % (micro * updates):
        raise PlacementError(f"each of the DP={dp} replicas trains on {prompts} / {dp} prompts x G={group} = "
                             f"{sequences} sequences per step, which do not split into "
                             f"trainer.updates_per_batch={updates} x trainer.micro_batch_size={micro}: choose a "
                             f"micro-batch size dividing {sequences // updates}")
    return BatchLayout(dp=dp, prompts_per_rank=per_rank, sequences_per_rank=sequences,
                       sequences_per_update=sequences // updates)


def _explicit_head_dim(arch: Any) -> int | None:
    head_dim = getattr(arch, "head_dim", None)
    return None if head_dim in (None, arch.hidden_size // arch.num_heads) else head_dim


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PlacementError(f"{name} must be an integer >= 1, got {value!r}")


def check_model_shape(shape: ModelShape, *, tp: int, pp: int, role: str, fp8: bool = False,
                      first_stage_layers: int | None = None, last_stage_layers: int | None = None) -> None:
    """Head, layer and width divisibility of ``shape`` under TP=``tp`` x PP=``pp`` (``role``: 'student', ...),
    with optional uneven first/last pipeline stages."""
    where = f"{role} {shape.name}"
    # lazy: torch stays out of recipes and the plan
    from rlad_megatron.models.layout import (
        pipeline_stage_layers, tensor_parallel_problem, valid_tensor_parallel_sizes,
    )

    problem = tensor_parallel_problem(shape.num_heads, shape.num_kv_heads, shape.head_dim_or_default, tp)
    if problem:
        choices = valid_tensor_parallel_sizes(shape.num_heads, shape.num_kv_heads, shape.head_dim_or_default)
        raise PlacementError(f"{where}: {problem}: choose TP among {choices}")
    if shape.num_layers % pp and first_stage_layers is None and last_stage_layers is None:
        raise PlacementError(f"{where}: {shape.num_layers} layers cannot be split into PP={pp} equal stages: "
                             f"choose PP among {_divisors(shape.num_layers)}, or set uneven first/last stages "
                             f"(parallel.first_stage_layers / last_stage_layers)")
    try:
        pipeline_stage_layers(shape.num_layers, pp, first_stage_layers, last_stage_layers)
    except ValueError as err:
        raise PlacementError(f"{where}: {err}") from None
    if fp8:
        for field in ("hidden_size", "intermediate_size"):
            width = getattr(shape, field)
            if (width // tp) % 16 or width % tp:
                raise PlacementError(f"{where}: FP8 GEMMs need every TP shard of {field}={width} to be a multiple "
                                     f"of 16 ({width} / TP={tp} = {width / tp:g}): change TP or disable fp8")


def plan_placement(config: RunConfig, *, nodes: int, gpus_per_node: int, rollout_gpus: int = 0,
                   rollout_tp: int | None = None, teacher_gpus: int | None = None, student: ModelShape | None = None,
                   teacher: ModelShape | None = None) -> Placement:
    """Decide and check the layout of ``config`` on ``nodes x gpus_per_node`` GPUs (one rank per GPU).

    ``rollout_gpus``: GPUs reserved for disaggregated engines (must be 0 when colocated, > 0 when not).
    ``rollout_tp``: engine tensor parallel size (default: the learner's TP). ``teacher_gpus``: GPUs of a teacher
    pool of its own (``teacher.placement=separate``); None: what the pool needs (``teacher.ranks`` for a Megatron
    teacher; for a vLLM teacher the count that gives one engine per learner replica), 0 without a pool. The errors
    name the launcher's flags (``--rollout-gpus``, ``--teacher-gpus``). ``student``/``teacher``: model shapes, when
    known, for the head/layer checks. Raises :class:`PlacementError`.
    """
    _positive("nodes", nodes)
    _positive("gpus_per_node", gpus_per_node)
    tp, pp = config.parallel.tensor_parallel, config.parallel.pipeline_parallel
    cp = config.parallel.context_parallel
    _positive("parallel.tensor_parallel", tp)
    _positive("parallel.pipeline_parallel", pp)
    _positive("parallel.context_parallel", cp)
    world = nodes * gpus_per_node
    alloc = f"{world} GPUs ({nodes} node(s) x {gpus_per_node})"
    per_replica = tp * pp * cp
    replica = f"TP={tp} x PP={pp}" + (f" x CP={cp}" if cp > 1 else "")
    if tp > gpus_per_node or gpus_per_node % tp:
        raise PlacementError(f"TP={tp} must fit inside one node and divide its {gpus_per_node} GPUs (tensor "
                             "parallelism needs the intra-node links): lower parallel.tensor_parallel")

    colocated = config.rollout.placement == "colocated"
    # A teacher of its own only when the loss scores with it (sft's teacher is the rollout engine's model).
    teacher_kind = config.teacher.source if teacher_use(config.loss) == "logprobs" and config.model.teacher else "none"
    separate = teacher_kind != "none" and config.teacher.placement == "separate"
    vllm_pool, megatron_pool = separate and teacher_kind == "vllm", separate and teacher_kind == "megatron"
    if teacher_gpus is not None and teacher_gpus < 0:
        raise PlacementError(f"teacher_gpus={teacher_gpus} (--teacher-gpus): a GPU count must be >= 0")
    if teacher_gpus and not separate:
        raise PlacementError(f"teacher_gpus={teacher_gpus} (--teacher-gpus {teacher_gpus}) are a teacher pool's GPUs: "
                             f"set teacher.placement=separate (this run's teacher is {teacher_kind!r}, on the "
                             "learner's GPUs) or leave --teacher-gpus out")
    if megatron_pool and teacher_gpus not in (None, config.teacher.ranks):
        raise PlacementError(f"teacher.ranks={config.teacher.ranks} teacher ranks need teacher_gpus="
                             f"{config.teacher.ranks} GPUs of their own, got teacher_gpus={teacher_gpus}: give "
                             f"--teacher-gpus {config.teacher.ranks} or leave --teacher-gpus out")
    # a disaggregated engine is one process with one GPU (the trainer's "uni" executor), one per learner replica
    rollout_tp = (tp if colocated else 1) if rollout_tp is None else rollout_tp
    _positive("rollout_tp", rollout_tp)
    # GPUs of each learner replica's engines (a disaggregated rollout engine, a vLLM teacher engine: processes of
    # their own on each node's last GPUs), and the GPUs of a Megatron teacher pool (ranks of the job)
    engines = {**({} if colocated else {"rollout": rollout_tp}), **({"teacher": 1} if vllm_pool else {})}
    reserved = (config.teacher.ranks if teacher_gpus is None else teacher_gpus) if megatron_pool else 0
    if colocated and rollout_gpus:
        raise PlacementError(f"rollout.placement=colocated runs the engines on the learner's GPUs, but "
                             f"rollout_gpus={rollout_gpus} were reserved: set rollout.placement=disaggregated or 0")
    if colocated and rollout_tp != tp:
        raise PlacementError(f"colocated engines share the learner's tensor-parallel group: rollout TP={rollout_tp} "
                             f"must equal parallel.tensor_parallel={tp}")
    if not colocated:
        if rollout_gpus < 1:
            fit = _fitting_dp(world, per_replica, nodes, tuple(engines.values()), reserved=reserved)
            raise PlacementError("rollout.placement=disaggregated needs GPUs of its own: give rollout_gpus >= 1 "
                                 f"(--rollout-gpus {fit * rollout_tp if fit else 'N'}: one engine per learner "
                                 "replica" + (f", with --teacher-gpus {fit}" if fit and vllm_pool else "") + ")")
        if rollout_gpus % rollout_tp:
            raise PlacementError(f"{rollout_gpus} rollout GPUs cannot hold whole engines of TP={rollout_tp} "
                                 f"({rollout_gpus} / {rollout_tp} is not whole)")
        if rollout_gpus % nodes:
            raise PlacementError(f"{rollout_gpus} rollout GPUs cannot be spread evenly over {nodes} nodes (each "
                                 f"node's engines run on its last GPUs): use a multiple of {nodes}")
    if rollout_tp > gpus_per_node:
        raise PlacementError(f"rollout TP={rollout_tp} would span nodes ({gpus_per_node} GPUs per node): "
                             f"keep engine TP <= {gpus_per_node}")

    if teacher_gpus is None:  # what the pool needs
        teacher_gpus = reserved
        if vllm_pool:
            teacher_gpus = _fitting_dp(world - rollout_gpus, per_replica, nodes, (1,)) or 0
            if not teacher_gpus:
                raise PlacementError(f"teacher.placement=separate with a vLLM teacher starts one teacher engine per "
                                     f"learner replica, each on a GPU of its own: {world} GPUs - {rollout_gpus} "
                                     f"rollout GPUs hold no whole number of {replica} replicas plus one engine GPU "
                                     f"each, spread evenly over {nodes} node(s): "
                                     + _engines_fit_hint(world, per_replica, nodes, engines, reserved))
    if vllm_pool and teacher_gpus % nodes:
        raise PlacementError(f"{teacher_gpus} teacher GPUs (--teacher-gpus {teacher_gpus}) cannot be spread evenly "
                             f"over {nodes} nodes (each node's teacher engines run on its last GPUs): use a multiple "
                             f"of {nodes}")
    learner = world - rollout_gpus - teacher_gpus
    if learner < 1:
        raise PlacementError(f"{alloc} leave no GPUs for the learner after {rollout_gpus} rollout + "
                             f"{teacher_gpus} teacher GPUs: ask for more nodes or reserve fewer GPUs")
    if per_replica > learner:
        raise PlacementError(f"{learner} learner GPUs cannot hold {replica} = {per_replica} GPUs per "
                             f"replica: lower TP/PP{'/CP' if cp > 1 else ''} or ask for more GPUs")
    if learner % per_replica:
        raise PlacementError(f"{learner} learner GPUs are not a whole number of {replica} = {per_replica}-GPU "
                             f"replicas (DP would be {learner / per_replica:g}): use a multiple of {per_replica} "
                             f"learner GPUs or change TP/PP{'/CP' if cp > 1 else ''}")
    dp = learner // per_replica
    if vllm_pool and teacher_gpus != dp:
        raise PlacementError(f"teacher.placement=separate with a vLLM teacher starts one teacher engine per learner "
                             f"replica, each on a GPU of its own: {world} GPUs - {rollout_gpus} rollout - "
                             f"{teacher_gpus} teacher GPUs (--teacher-gpus {teacher_gpus}) leave DP={dp} replicas "
                             f"of {replica} but {teacher_gpus} teacher engine(s): "
                             + _engines_fit_hint(world, per_replica, nodes, engines, reserved))
    t = config.teacher
    if separate and teacher_kind == "megatron" and t.tensor_parallel > gpus_per_node:
        raise PlacementError(f"teacher.tensor_parallel={t.tensor_parallel} would span nodes ({gpus_per_node} GPUs per "
                             "node): lower it")

    batch_layout(config, dp)
    prompts = config.data.prompts_per_step
    num_engines = dp if colocated else rollout_gpus // rollout_tp
    if not colocated and num_engines != dp:
        others = f" - {teacher_gpus} teacher" if teacher_gpus else ""
        raise PlacementError(f"the trainer starts one rollout engine per learner replica, each on {rollout_tp} GPU(s) "
                             f"of its own: {world} GPUs - {rollout_gpus} rollout{others} GPUs leave DP={dp} replicas "
                             f"of {replica} but {rollout_gpus} GPUs hold {num_engines} engine(s): "
                             + _engines_fit_hint(world, per_replica, nodes, engines, reserved))
    if not colocated and prompts % num_engines:
        raise PlacementError(f"data.prompts_per_step={prompts} prompts cannot be shared evenly by {num_engines} "
                             f"rollout engines: use a multiple of {num_engines}")

    fp8 = config.fp8.enabled
    if student is not None:
        check_model_shape(student, tp=tp, pp=pp, role="student", fp8=fp8,
                          first_stage_layers=config.parallel.first_stage_layers,
                          last_stage_layers=config.parallel.last_stage_layers)
        if rollout_tp != tp:
            check_model_shape(student, tp=rollout_tp, pp=1, role="student (rollout engine)")
    if teacher is not None and teacher_kind == "megatron":
        ttp, tpp = (t.tensor_parallel, t.pipeline_parallel) if separate else (tp, pp)
        check_model_shape(teacher, tp=ttp, pp=tpp, role="teacher", fp8=False,
                          first_stage_layers=config.parallel.teacher_first_stage_layers,
                          last_stage_layers=config.parallel.teacher_last_stage_layers)
    return Placement(nodes=nodes, gpus_per_node=gpus_per_node, tp=tp, pp=pp, dp=dp,
                     rollout=config.rollout.placement, rollout_gpus=rollout_gpus, rollout_tp=rollout_tp,
                     num_engines=num_engines, teacher=teacher_kind, teacher_gpus=teacher_gpus, cp=cp,
                     teacher_layout=(t.tensor_parallel, t.pipeline_parallel, t.expert_parallel))


def _fitting_dp(gpus: int, per_replica: int, nodes: int, engines: tuple[int, ...], *, reserved: int = 0) -> int | None:
    """The learner DP whose replicas of ``per_replica`` GPUs, each with one engine of every size in ``engines``
    (GPUs: a rollout engine's TP, a vLLM teacher engine's 1), fill ``gpus - reserved`` GPUs exactly, each pool's
    engines spread evenly over the ``nodes``; None when no DP does."""
    dp, rest = divmod(gpus - reserved, per_replica + sum(engines))
    return dp if dp >= 1 and not rest and all(dp * e % nodes == 0 for e in engines) else None


def _engines_fit_hint(world: int, per_replica: int, nodes: int, engines: dict[str, int], reserved: int) -> str:
    """What to give so that every learner replica gets one engine of each pool in ``engines`` ("rollout" / "teacher":
    GPUs per engine): the launcher's flags, or that no count fits."""
    dp = _fitting_dp(world, per_replica, nodes, tuple(engines.values()), reserved=reserved)
    if dp is None:
        return "no engine GPU count fits this allocation; change the GPUs or the learner's layout"
    counts = {pool: dp * size for pool, size in engines.items()}
    return ("give " + " and ".join(f"{pool}_gpus={n}" for pool, n in counts.items()) + " ("
            + " ".join(f"--{pool}-gpus {n}" for pool, n in counts.items()) + ")")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
