"""Build the parts of a training run once, explicitly, from a validated ``RunConfig`` under the current torchrun
world: the student, the teacher and the reference (exactly those ``loss.required_inputs`` asks for), the rollout
engine with its weight synchronizer and reward guard, and the prompt stream. It only builds: everything that can be
checked first is checked before, by its caller (:func:`rlad_megatron.trainer.setup.checks.check_run`).

    parts = build_components(config)     # collective: every rank of the job calls it
    parts.student.policy.train_step(...); parts.teacher.token_logprobs(batch); parts.synchronizer.sync(...)
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

from rlad_megatron import parallel
from rlad_megatron.config import (
    RunConfig, megatron_teacher, required_inputs, teacher_models, teacher_pool, teacher_use,
)
from rlad_megatron.console import say
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.data.prompt_stream import PromptStream
from rlad_megatron.device import collective_device, rank_device, uses_cuda
from rlad_megatron.engine_api import RolloutEngine
from rlad_megatron.fp8 import transformer_config_fp8_kwargs
from rlad_megatron.learner.batching import MicroBatching
from rlad_megatron.learner.policy import MegatronPolicy, build_student
from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
from rlad_megatron.models import export_hf_checkpoint, load_hf_model
from rlad_megatron.models.builder import recompute_fields
from rlad_megatron.models.hf_config import ModelArch
from rlad_megatron.models.layout import stage_overrides
from rlad_megatron.models.stop_tokens import stop_token_ids
from rlad_megatron.parallel import share_from_one
from rlad_megatron.placement import BatchLayout, ModelShape, batch_layout
from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.rollout.factory import build_rollout_engine, is_leader_rank
from rlad_megatron.tasks.base import Task
from rlad_megatron.tasks.registry import get_training_task
from rlad_megatron.teacher import MegatronTeacher, RoutedTeachers, Teacher, VLLMTeacher
from rlad_megatron.trainer.setup.engine_settings import (
    colocated_memory_fraction, engine_config, pin_learner_cpus, planned_memory_fraction, report_engine_kv_cache,
    seed_requests,
)
from rlad_megatron.weight_sync.sync import WeightSynchronizer
from rlad_megatron.weight_sync.verify import SyncVerifier, calibrated_tolerance, make_sampled_probe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclasses.dataclass(frozen=True)
class Student:
    """The trainable policy, its unwrapped model chunks (what weight sync and export read) and its architecture."""

    policy: MegatronPolicy
    modules: list[torch.nn.Module]
    arch: ModelArch
    hf_dir: str
    """Where it was loaded from (its tokenizer files go with every export)."""
    export_dtype: torch.dtype = torch.float32
    """The dtype of exported tensors (``trainer.export_dtype``, default the learner's ``model.params_dtype``)."""

    def export(self, out_dir: Path) -> None:
        """Write the current weights as a Hugging Face checkpoint (collective over the model-parallel group)."""
        export_hf_checkpoint(self.modules, self.arch, out_dir, tokenizer_dir=self.hf_dir, dtype=self.export_dtype)


@dataclasses.dataclass(frozen=True)
class Components:
    """Everything one rank of a training run holds. Built once by :func:`build_components`; nothing is patched
    in afterwards (the trainer owns its logger and its step counters)."""

    config: RunConfig
    layout: BatchLayout
    output_dir: Path
    dp_rank: int
    model_parallel_group: Any
    """The process group of this rank's model-parallel replica (what rollouts and scores are shared over)."""
    student: Student
    teacher: Teacher | None
    """Exactly when the loss needs ``teacher_logprobs`` (rlad, kdrl)."""
    reference: Teacher | None
    """The frozen initial student, exactly when the loss needs ``ref_logprobs`` (``loss.kl_beta > 0``)."""
    engine: RolloutEngine | None
    """The rollout engine: on the first rank of each model-parallel group ("uni" executor; None elsewhere), or one
    shard of it on every rank (vLLM's external launcher, ``rollout.executor``)."""
    synchronizer: WeightSynchronizer | None
    """None when the engine serves the teacher (sft) and never receives the student's weights."""
    reward_guard: RewardGuard | None
    task: Task
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptStream
    pad_id: int
    eos_id: int
    stop_ids: tuple[int, ...] = ()
    """Every token that ends a response (eos, generation-config eos list, chat-template end of turn)."""
    seed_requests: bool = True
    """Whether each rollout request carries its own seed (``rollout.seed_requests`` resolved for this machine)."""

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def close(self) -> None:
        if self.reward_guard is not None:
            self.reward_guard.close()
        for part in (self.teacher, self.reference):
            if part is not None:
                part.close()
        if self.engine is not None:
            self.engine.shutdown()


def learner_probe(student: MegatronPolicy, pad_id: int,
                  group: Any) -> Callable[[list[list[int]], list[int]], list[list[float]]]:
    """The learner side of the weight-sync probe: ``(sequences, prompt_lens)`` -> the student's log-probs of
    ``sequences[i][prompt_lens[i]:]``, on every rank of the model-parallel group."""

    def logprobs(sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        n = len(sequences)
        tokens, mask, _ = pack_sequences(
            [s[:p] for s, p in zip(sequences, prompt_lens)], [s[p:] for s, p in zip(sequences, prompt_lens)],
            [[0.0] * (len(s) - p) for s, p in zip(sequences, prompt_lens)], pad_id=pad_id,
        )
        batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(n), rewards=torch.zeros(n),
                              correct=torch.zeros(n, dtype=torch.bool),
                              engine_logprobs=torch.zeros_like(mask, dtype=torch.float32))
        lps = student.token_logprobs(batch, n)
        result = None if lps is None else [lps[i][mask[i]].tolist() for i in range(n)]
        return share_from_one(result, group)

    return logprobs


def build_components(config: RunConfig) -> Components:
    """Initialise model parallelism and build every part of the run ``config`` describes (collective). The run is
    checked before (:func:`rlad_megatron.trainer.setup.checks.check_run`): a bad input found here is a bug of
    those checks."""
    # transformers is imported when a run is built, not when the trainer package is imported (it costs seconds)
    from transformers import AutoTokenizer

    c = config
    parallel.initialize_model_parallel(c.parallel.tensor_parallel, c.parallel.pipeline_parallel, seed=c.trainer.seed,
                                       context_parallel=c.parallel.context_parallel,
                                       expert_parallel=c.parallel.expert_parallel)
    torch.manual_seed(c.trainer.seed)
    dp_rank, dp_size = parallel.data_parallel_rank_and_size()
    layout = batch_layout(c, dp_size)
    output_dir = Path(c.trainer.output_dir)
    mp_group = parallel.replica_group()  # TP x PP (x CP): the ranks that share one replica's rollouts
    needs = required_inputs(c.loss)
    use = teacher_use(c.loss)

    tokenizer = AutoTokenizer.from_pretrained(c.model.student, trust_remote_code=c.model.trust_remote_code)
    # every token that ends a response: the student's, and the teacher's when it scores or writes the turns
    stop_folders = [c.model.student] + ([c.model.teacher] if c.model.teacher and use != "none" else []) + [
        t.model for t in c.teacher.teachers]
    stop_ids = stop_token_ids(tokenizer, stop_folders, c.data.chat_template_kwargs)
    task = get_training_task(c.data.task, c.data.task_options)
    dataset = load_prompt_dataset(c.data.train_files, task, tokenizer, c.data.max_prompt_tokens,
                                  bad_rows=c.data.bad_rows, chat_template_kwargs=c.data.chat_template_kwargs,
                                  split=c.data.split, fields=c.data.fields)
    prompts = PromptStream(dataset, batch_size=layout.prompts_per_rank, seed=c.trainer.seed,
                           dp_rank=dp_rank, dp_size=dp_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    dtype = torch.bfloat16 if c.model.params_dtype == "bfloat16" else torch.float32
    # FP8 (Transformer Engine, GPU only; checked above) for the student; the frozen teacher stays in params_dtype so
    # that its log-probs are not quantised.
    fp8 = transformer_config_fp8_kwargs(c.fp8) if c.fp8.enabled else {}
    student_stages = stage_overrides(c.parallel.first_stage_layers, c.parallel.last_stage_layers)
    # activation recomputation only where there is a backward (the student's training passes)
    recompute = recompute_fields(c.parallel.recompute, c.parallel.recompute_num_layers)
    modules, arch = load_hf_model(c.model.student, trainable=True, params_dtype=dtype,
                                  sequence_parallel=c.parallel.sequence_parallel, **fp8, **student_stages,
                                  **recompute)
    wrapped, optimizer = build_student(modules, c.optim)
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer, with_entropy="entropy" in needs,
                            fused_logprobs=c.trainer.fused_logprobs)
    student = Student(policy=policy, modules=modules, arch=arch, hf_dir=c.model.student,
                      export_dtype=getattr(torch, c.trainer.export_dtype or c.model.params_dtype))

    micro = MicroBatching.for_forward(c.trainer)  # teacher / reference scoring: the forward-only budget
    reference = None
    if "ref_logprobs" in needs:  # the reference policy of the KL penalty: a frozen copy of the initial student
        reference = MegatronTeacher.load(c.model.student, batching=micro, params_dtype=dtype,
                                         sequence_parallel=c.parallel.sequence_parallel,
                                         fused_logprobs=c.trainer.fused_logprobs, **student_stages)

    cuda = uses_cuda()
    engine_cfg = engine_config(c, c.model.teacher if use == "samples" else c.model.student, cuda=cuda,
                               gpu_memory_utilization=_engine_memory_fraction(c, cuda, arch, dp_size),
                               replica=dp_rank)
    engine, transport = build_rollout_engine(engine_cfg)
    if engine is not None and dist.get_rank() == 0:
        report_engine_kv_cache(c, engine, cuda=cuda,
                               sequences_per_step=layout.prompts_per_rank * c.rollout.group_size)
    if engine_cfg.cpu_cores:  # after the engine process has started with its own affinity
        pin_learner_cpus(engine_cfg.cpu_cores, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))

    teacher: Teacher | None = None
    if teacher_pool(c) != "none":  # a pool of its own (rlad_megatron/pools/)
        from rlad_megatron.pools.build import build_pooled_teacher  # the pool's clients, only for such a run

        teacher = build_pooled_teacher(c, engine_cfg, mp_group, dp_rank)
    elif megatron_teacher(c):  # its tokenizer was checked against the student's (check_run)
        teacher = MegatronTeacher.load(c.model.teacher, batching=micro, params_dtype=dtype,
                                       sequence_parallel=c.parallel.sequence_parallel, offload=c.teacher.offload,
                                       fused_logprobs=c.trainer.fused_logprobs,
                                       **stage_overrides(c.parallel.teacher_first_stage_layers,
                                                         c.parallel.teacher_last_stage_layers))
    elif c.teacher.several() and use == "logprobs":  # each prompt scored by its routed teacher
        teacher = _routed_teachers(c, engine, engine_cfg, micro, dtype, mp_group, cuda)
    elif use == "logprobs":  # teacher.source == "vllm": a scoring engine next to the rollout engine
        scorer = None
        if engine is not None:
            # vLLM is imported on the ranks that hold an engine, and only there
            from rlad_megatron.rollout.vllm_engine import VLLMTeacherScorer

            scorer = VLLMTeacherScorer(dataclasses.replace(
                engine_cfg, model=c.model.teacher, placement="colocated", enable_sleep_mode=False, cpu_cores=(),
                gpu_memory_utilization=_engine_memory_fraction(c, cuda),  # measured again, after the first engine
                max_logprobs=max(20, c.loss.topk_k) if c.loss.uses_topk() else None))  # loss.topk_kl
        teacher = VLLMTeacher(scorer, mp_group)

    synchronizer = None
    if use != "samples":
        probe = make_sampled_probe([ex.prompt_token_ids for ex in dataset.examples],
                                   max_tokens=min(32, c.rollout.max_new_tokens), seed=c.trainer.seed)
        tolerance = calibrated_tolerance(
            c.rollout.dtype, c.model.params_dtype, fp8=c.fp8.enabled or c.fp8.rollout_fp8,
            stop_on_fp8=c.rollout.mismatch_stops_fp8, max_abs=c.rollout.max_logprob_mismatch,
            mean_abs=c.rollout.mean_logprob_mismatch)
        verifier = SyncVerifier(engine, learner_probe(policy, pad_id, mp_group), probe, tolerance=tolerance,
                                group=mp_group)
        sleeping = engine is not None and c.rollout.sleep_level > 0
        synchronizer = WeightSynchronizer(transport, verifier=verifier, verify_every=c.rollout.verify_every,
                                          model_parallel_group=mp_group,
                                          every_rank=engine_cfg.executor == "external_launcher",
                                          wake=engine.wake_up if sleeping else None)

    if dist.get_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        say(f"[rlad] {dataset.report.summary()}")
        say(f"[rlad] world={dist.get_world_size()} tp={c.parallel.tensor_parallel} "
              f"pp={c.parallel.pipeline_parallel} dp={dp_size} algorithm={c.loss.algorithm} "
              f"output={output_dir}")
    return Components(
        config=c, layout=layout, output_dir=output_dir, dp_rank=dp_rank, model_parallel_group=mp_group,
        student=student, teacher=teacher, reference=reference, engine=engine, synchronizer=synchronizer,
        reward_guard=(RewardGuard(task.reward, timeout_s=c.rollout.reward_timeout_s)
                      if engine is not None and is_leader_rank() else None),
        task=task, tokenizer=tokenizer,
        prompts=prompts, pad_id=pad_id, eos_id=tokenizer.eos_token_id, stop_ids=stop_ids,
        seed_requests=seed_requests(c.rollout, cuda),
    )


def _routed_teachers(c: RunConfig, engine, engine_cfg, micro: MicroBatching, dtype: torch.dtype, mp_group,
                     cuda: bool) -> RoutedTeachers:
    """Every teacher of ``teacher.teachers`` (colocated, like the one teacher: a frozen Megatron model with the
    learner's layout, or a vLLM scoring engine on the engine rank); their tokenizers were checked (check_run)."""
    teachers: list[Teacher] = []
    for _, m in teacher_models(c):
        if m.source == "megatron":
            teachers.append(MegatronTeacher.load(
                m.model, batching=micro, params_dtype=dtype, sequence_parallel=c.parallel.sequence_parallel,
                offload=c.teacher.offload, fused_logprobs=c.trainer.fused_logprobs,
                **stage_overrides(c.parallel.teacher_first_stage_layers, c.parallel.teacher_last_stage_layers)))
            continue
        scorer = None
        if engine is not None:
            from rlad_megatron.rollout.vllm_engine import VLLMTeacherScorer  # vLLM only on the engine ranks

            scorer = VLLMTeacherScorer(dataclasses.replace(
                engine_cfg, model=m.model, placement="colocated", enable_sleep_mode=False, cpu_cores=(),
                gpu_memory_utilization=_engine_memory_fraction(c, cuda)))
        teachers.append(VLLMTeacher(scorer, mp_group))
    return RoutedTeachers(teachers, [m.name for m in c.teacher.teachers])


def _engine_memory_fraction(c: RunConfig, cuda: bool, arch: ModelArch | None = None,
                            dp: int = 1) -> float | None:
    """``rollout.gpu_memory_utilization``, or on a GPU the learner shares (colocated) the smaller of the engine's
    share in the memory plan (with ``arch``) and what is free now minus a margin
    (:mod:`rlad_megatron.trainer.setup.engine_settings`), the same on every rank; None on CPU. Collective."""
    if not cuda or c.rollout.gpu_memory_utilization is not None:
        return c.rollout.gpu_memory_utilization
    if c.rollout.placement != "colocated":
        return None  # the engine process measures its own GPU
    free, total = torch.cuda.mem_get_info(rank_device().index)
    share = colocated_memory_fraction(int(free), int(total), learner_shares_gpu=True)
    if arch is not None:
        teacher = None
        if megatron_teacher(c):
            teacher = ModelShape.from_hf_dir(c.model.teacher, "teacher")
        elif c.teacher.several():  # every Megatron teacher is counted
            teacher = [ModelShape.from_hf_dir(m.model, m.name) for _, m in teacher_models(c) if m.source == "megatron"]
        planned = planned_memory_fraction(c, ModelShape.from_arch(arch, "student"), teacher, dp, int(total))
        if planned is not None:
            share = min(share, planned)
    tensor = torch.tensor(share, dtype=torch.float64, device=collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)  # one setting for every shard of every engine
    return float(tensor)
