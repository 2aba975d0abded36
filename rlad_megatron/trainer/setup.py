"""Build everything a training run holds, from a validated ``RunConfig``, under the current torchrun world."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlad_megatron.config import RunConfig
from rlad_megatron.console import say
from rlad_megatron.learner.policy import MegatronPolicy, build_student
from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences


@dataclasses.dataclass
class TrainingSetup:
    config: RunConfig
    output_dir: Path
    checkpoint_dir: Path
    arch: Any
    student: MegatronPolicy
    student_modules: list[torch.nn.Module]
    teacher: MegatronPolicy | None
    reference: MegatronPolicy | None
    teacher_scorer: Any
    engine: Any
    synchronizer: Any
    verifier: Any
    reward_guard: Any
    task: Any
    prompts: Any
    tokenizer: Any
    pad_id: int
    eos_id: int
    dp_rank: int
    model_parallel_group: Any
    logger: Any = None
    stop_ids: tuple[int, ...] = ()
    """Every token that ends a response (eos, generation-config eos list, chat-template end of turn)."""

    def teacher_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        """``[B, L-1]`` teacher log-probs of the batch's tokens, on the last pipeline stage (None elsewhere)."""
        from megatron.core import parallel_state as ps

        micro = self.config.trainer.micro_batch_size
        if self.teacher is not None:
            return self.teacher.token_logprobs(batch, micro)
        scored = None
        if self.teacher_scorer is not None:  # vLLM teacher, on the engine rank
            lengths = batch.loss_mask.sum(dim=1).tolist()
            prompts, seqs = [], []
            for row, n_resp in zip(batch.tokens.tolist(), lengths):
                first = int(batch.loss_mask[len(seqs)].nonzero()[0]) + 1 if n_resp else 1
                prompts.append(first)
                seqs.append(row[: first + int(n_resp)])
            scored = self.teacher_scorer.score(seqs, prompts)
        from rlad_megatron.trainer.rollouts import share_from_one

        scored = share_from_one(scored, self.model_parallel_group)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        out = torch.zeros_like(batch.engine_logprobs)
        for i, values in enumerate(scored):
            idx = batch.loss_mask[i].nonzero().flatten()
            out[i, idx] = torch.tensor(values, dtype=torch.float32)[: len(idx)]
        return out

    def learner_probe_logprobs(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """The learner's log-probs of ``sequences[i][prompt_lens[i]:]`` on every rank of the model-parallel group."""
        from rlad_megatron.trainer.rollouts import share_from_one

        n = len(sequences)
        micro = n
        tokens, mask, _ = pack_sequences(
            [s[:p] for s, p in zip(sequences, prompt_lens)], [s[p:] for s, p in zip(sequences, prompt_lens)],
            [[0.0] * (len(s) - p) for s, p in zip(sequences, prompt_lens)], pad_id=self.pad_id,
        )
        batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(n), rewards=torch.zeros(n),
                              correct=torch.zeros(n, dtype=torch.bool), engine_logprobs=torch.zeros_like(mask,
                              dtype=torch.float32))
        lps = self.student.token_logprobs(batch, micro)
        result = None
        if lps is not None:
            result = [lps[i][mask[i]].tolist() for i in range(n)]
        return share_from_one(result, self.model_parallel_group)

    def export_student(self, out_dir: Path) -> None:
        from rlad_megatron.models import export_hf_checkpoint

        name = self.config.trainer.export_dtype or self.config.model.params_dtype
        export_hf_checkpoint(self.student_modules, self.arch, out_dir, tokenizer_dir=self.config.model.student,
                             dtype=getattr(torch, name))

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
        if self.reward_guard is not None:
            self.reward_guard.close()
        for engine in (self.engine, self.teacher_scorer):
            if engine is not None:
                engine.shutdown()


def _stop_ids(c: RunConfig, tokenizer: Any) -> tuple[int, ...]:
    """The run's stop tokens; with a teacher (it scores the student's turns, or generates them for sft), first
    check that both chat templates end a turn with the same token."""
    from transformers import AutoTokenizer

    from rlad_megatron.models.stop_tokens import check_turn_ends_agree, stop_token_ids

    folders = [c.model.student]
    if c.model.teacher and c.loss.algorithm in ("rlad", "kdrl", "sft"):
        teacher_tok = AutoTokenizer.from_pretrained(c.model.teacher, trust_remote_code=c.model.trust_remote_code)
        check_turn_ends_agree(tokenizer, teacher_tok, c.data.chat_template_kwargs,
                              student=c.model.student, teacher=c.model.teacher)
        folders.append(c.model.teacher)
    return stop_token_ids(tokenizer, folders, c.data.chat_template_kwargs)


def build_training_setup(config: RunConfig) -> TrainingSetup:
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    from rlad_megatron import parallel
    from rlad_megatron.data.prompt_dataset import load_prompt_dataset
    from rlad_megatron.data.prompt_stream import PromptStream
    from rlad_megatron.tasks.registry import get_training_task
    from rlad_megatron.models import load_hf_model, load_teacher
    from rlad_megatron.rewards.guard import RewardGuard
    from rlad_megatron.rollout.config import VLLMEngineConfig
    from rlad_megatron.rollout.factory import build_rollout_engine
    from rlad_megatron.weight_sync.sync import WeightSynchronizer
    from rlad_megatron.weight_sync.verify import SyncVerifier, make_probe_batch

    from rlad_megatron.models.folder_check import check_model_folder

    c = config
    check_model_folder(c.model.student, "model.student")
    if c.model.teacher and c.loss.algorithm in ("rlad", "kdrl", "sft"):
        check_model_folder(c.model.teacher, "model.teacher")
    parallel.initialize_model_parallel(c.parallel.tensor_parallel, c.parallel.pipeline_parallel, seed=c.trainer.seed)
    torch.manual_seed(c.trainer.seed)
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    if c.data.prompts_per_step % dp_size:
        raise ValueError(
            f"data.prompts_per_step={c.data.prompts_per_step} must be a multiple of the data-parallel size {dp_size}"
        )
    output_dir = Path(c.trainer.output_dir)
    mp_group = ps.get_model_parallel_group()

    tokenizer = AutoTokenizer.from_pretrained(c.model.student, trust_remote_code=c.model.trust_remote_code)
    stop_ids = _stop_ids(c, tokenizer)
    task = get_training_task(c.data.task, c.data.task_options)
    dataset = load_prompt_dataset(c.data.train_files, task, tokenizer, c.data.max_prompt_tokens,
                                  bad_rows=c.data.bad_rows, chat_template_kwargs=c.data.chat_template_kwargs)
    prompts = PromptStream(dataset, batch_size=c.data.prompts_per_step // dp_size, seed=c.trainer.seed,
                           dp_rank=dp_rank, dp_size=dp_size)
    if (c.data.prompts_per_step // dp_size) % c.trainer.updates_per_batch:
        raise ValueError(
            f"each data-parallel rank gets {c.data.prompts_per_step // dp_size} prompts per step, which must be a "
            f"multiple of trainer.updates_per_batch={c.trainer.updates_per_batch} (each update takes whole groups)"
        )
    per_rank = c.data.prompts_per_step // dp_size * c.rollout.group_size
    if per_rank % (c.trainer.micro_batch_size * c.trainer.updates_per_batch):
        raise ValueError(
            f"each data-parallel rank trains on {per_rank} sequences per step (prompts_per_step / dp x group_size), "
            f"which must split into trainer.updates_per_batch={c.trainer.updates_per_batch} updates of "
            f"micro-batches of trainer.micro_batch_size={c.trainer.micro_batch_size}"
        )

    dtype = torch.bfloat16 if c.model.params_dtype == "bfloat16" else torch.float32
    from rlad_megatron.fp8 import transformer_config_fp8_kwargs

    # FP8 (Transformer Engine, GPU only; checked at config time) for the student; the frozen teacher stays in
    # params_dtype so that its log-probs are not quantised.
    fp8 = transformer_config_fp8_kwargs(c.fp8) if c.fp8.enabled else {}
    from rlad_megatron.models.layout import stage_overrides

    student_stages = stage_overrides(c.parallel.first_stage_layers, c.parallel.last_stage_layers)
    modules, arch = load_hf_model(c.model.student, trainable=True, params_dtype=dtype,
                                  sequence_parallel=c.parallel.sequence_parallel, **fp8, **student_stages)
    wrapped, optimizer = build_student(modules, c.optim)
    student = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer, with_entropy=c.loss.entropy_coef > 0)

    needs_teacher = c.loss.algorithm in ("rlad", "kdrl")
    teacher = teacher_scorer = None
    if needs_teacher and c.teacher.source == "megatron":
        t_chunks, t_arch = load_teacher(c.model.teacher, student_dir=c.model.student, params_dtype=dtype,
                                        sequence_parallel=c.parallel.sequence_parallel,
                                        **stage_overrides(c.parallel.teacher_first_stage_layers,
                                                          c.parallel.teacher_last_stage_layers))
        teacher = MegatronPolicy(t_chunks, t_arch.vocab_size)

    reference = None
    if c.loss.kl_beta > 0:  # the reference policy of the KL penalty: a frozen copy of the initial student
        r_chunks, r_arch = load_teacher(c.model.student, params_dtype=dtype,
                                        sequence_parallel=c.parallel.sequence_parallel, **student_stages)
        reference = MegatronPolicy(r_chunks, r_arch.vocab_size)

    sft = c.loss.algorithm == "sft"
    engine_cfg = VLLMEngineConfig(
        model=c.model.teacher if sft else c.model.student, dtype=c.rollout.dtype,
        max_model_len=c.data.max_prompt_tokens + c.rollout.max_new_tokens + 8,
        kv_cache_bytes=c.rollout.kv_cache_mb << 20, seed=c.trainer.seed,
        weight_load=c.rollout.weight_load, placement=c.rollout.placement,
        quantization="fp8" if c.fp8.rollout_fp8 else None,
    )
    engine, transport = build_rollout_engine(engine_cfg)
    if needs_teacher and c.teacher.source == "vllm" and engine is not None:
        from rlad_megatron.rollout.vllm_engine import VLLMTeacherScorer

        teacher_scorer = VLLMTeacherScorer(dataclasses.replace(engine_cfg, model=c.model.teacher,
                                                               placement="colocated"))
    guard = RewardGuard(task.reward, timeout_s=c.rollout.reward_timeout_s) if engine is not None else None

    setup = TrainingSetup(
        config=c, output_dir=output_dir, checkpoint_dir=output_dir / "checkpoints", arch=arch, student=student,
        student_modules=modules, teacher=teacher, reference=reference, teacher_scorer=teacher_scorer, engine=engine, synchronizer=None,
        verifier=None, reward_guard=guard, task=task, prompts=prompts, tokenizer=tokenizer,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_id=tokenizer.eos_token_id, dp_rank=dp_rank, model_parallel_group=mp_group, stop_ids=stop_ids,
    )
    if not sft:
        setup.verifier = SyncVerifier(engine, setup.learner_probe_logprobs, make_probe_batch(arch.vocab_size),
                                      max_abs_tol=c.rollout.max_logprob_mismatch)
        setup.synchronizer = WeightSynchronizer(transport, verifier=setup.verifier, model_parallel_group=mp_group)
    if dist.get_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        say(f"[rlad] {dataset.report.summary()}")
        say(f"[rlad] world={dist.get_world_size()} tp={c.parallel.tensor_parallel} "
              f"pp={c.parallel.pipeline_parallel} dp={dp_size} algorithm={c.loss.algorithm} "
              f"output={output_dir}")
    return setup
