"""The RLAD training loop. Every rank runs it (one SPMD program under torchrun); it reads as the step does:

    prompts -> rollouts (engine rank) -> rewards -> advantages -> teacher / old log-probs -> policy updates
            -> weight sync + verification -> metrics, checkpoint
"""
from __future__ import annotations

import math
import resource
import time

import torch
import torch.distributed as dist

from rlad_megatron.config import RunConfig, run_config_to_dict, teacher_use
from rlad_megatron.console import say
from rlad_megatron.device import collective_device, for_collective
from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.learner.balance import balance_over_data_parallel, mini_batch_of_rows
from rlad_megatron.learner.batching import MicroBatching
from rlad_megatron.learner.policy import MegatronPolicy
from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.loss import Denominators, MetricAccumulator, compute_policy_loss, local_denominators, required_inputs
from rlad_megatron.loss.teacher_metrics import per_teacher_stats, route_shares
from rlad_megatron.loss.tis import tis_weights
from rlad_megatron.parallel import data_parallel_group, data_parallel_rank_and_size, is_last_pipeline_stage, share_from_one
from rlad_megatron.trainer.setup.checks import check_run
from rlad_megatron.trainer.setup.components import Components, build_components
from rlad_megatron.trainer.checkpoints.run_dir import record_run_config
from rlad_megatron.trainer.checkpoints.state import TrainerState, find_loadable_checkpoint
from rlad_megatron.trainer.faults import pause_point
from rlad_megatron.trainer.observability.logger import MetricsLogger
from rlad_megatron.trainer.observability.periodic_eval import evaluate_now, load_eval_examples
from rlad_megatron.trainer.step.guards import NonFiniteStepGuard, TrainingStopped
from rlad_megatron.trainer.step.rollout_pipeline import RolloutPipeline
from rlad_megatron.trainer.step.rollouts import Rollouts, generate_and_score, to_sequence_batch
from rlad_megatron.trainer.step.timeline import pool_timeline
from rlad_megatron.trainer.step.truncation import TruncationPolicy
from rlad_megatron.teacher.routing import TeacherRouter
from rlad_megatron.weight_sync.verify import probe_from_samples


#: The loss inputs the teacher computes (its log-probs of the samples; its top-k per position).
TEACHER_INPUTS = frozenset({"teacher_logprobs", "teacher_topk_logprobs"})


def _peak_rss_mb() -> float:
    """Largest resident set of any rank of this job so far (each rank's own maximum, max over the world)."""
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, dtype=torch.float64,
                        device=collective_device())
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak)


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warm-up to ``optim.lr``, then cosine decay to ``optim.min_lr`` over ``trainer.steps``."""
    o, total = config.optim, config.trainer.steps
    if o.warmup_steps and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _global_denominators(batch: SequenceBatch, dp_group) -> Denominators:
    local = for_collective(local_denominators(batch.loss_mask).as_tensor(), dp_group)
    dist.all_reduce(local, group=dp_group)
    return Denominators.from_tensor(local.cpu())


def _reduce_metrics(acc: MetricAccumulator, has_values: bool, group) -> dict[str, float]:
    """Loss metrics live on the last pipeline stage; reduce them over the data-parallel group there, then share."""
    result = None
    if has_values:
        dp_group = data_parallel_group()
        sums, maxima = (for_collective(t, dp_group) for t in acc.tensors())
        dist.all_reduce(sums, group=dp_group)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX, group=dp_group)
        result = acc.finalize(sums.cpu(), maxima.cpu())
    return share_from_one(result, group, required=False) or {}


class Trainer:
    def __init__(self, config: RunConfig, *, resume: bool = False) -> None:
        self.config = config
        self.parts: Components = build_components(config)
        self.needs = required_inputs(config.loss)
        """The loss's inputs besides the student's log-probs: the step computes exactly these."""
        self.router = TeacherRouter.of(config)
        """Several teachers: which one scores each prompt (None with one teacher)."""
        self.step = 0
        self.weight_version = 0
        self.non_finite = NonFiniteStepGuard(
            config.trainer.max_consecutive_bad_steps,
            f" The last good checkpoint is under {config.trainer.output_dir}/checkpoints.",
        )
        s = self.parts
        rank0 = dist.get_rank() == 0
        self.rollouts = self._rollout_pipeline()
        self._saved_step = -1  # the step of the newest checkpoint on disk that this run wrote or loaded
        if resume:
            folder = find_loadable_checkpoint(s.checkpoint_dir)
            if folder is None:
                if rank0:
                    say(f"[rlad] --resume: no checkpoint under {s.checkpoint_dir}; starting at step 0")
            else:
                state = TrainerState.load(folder, s.student.policy.chunks, s.student.policy.optimizer)
                self.step = self._saved_step = state.step
                s.prompts.load_state_dict(state.data)
                # The first sync labels the loaded weights with the version they had (batches generated ahead
                # keep their staleness, and the verification schedule its phase).
                self.weight_version = max(0, int(state.weight_version) - 1)
                self.rollouts.load_state_dict(state.rollouts_ahead)
                if rank0:
                    say(f"[rlad] resumed from {folder} at step {self.step}")
        if rank0:
            record_run_config(s.output_dir, config)
        self.eval_examples = load_eval_examples(config, s.task, s.tokenizer)
        self.logger = MetricsLogger(s.output_dir, config.trainer.steps, start_step=self.step, enabled=rank0,
                                    wandb=config.trainer.wandb, run_config=run_config_to_dict(config))
        self._sync_weights()  # the engine starts from the HF files: make it serve the learner's weights

    # ---------------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg, s = self.config, self.parts
        last: dict[str, float] = {}
        try:
            while self.step < cfg.trainer.steps:
                last = self.train_step()
                self.step += 1
                if self._eval_due():
                    last.update(evaluate_now(cfg, s.engine, s.task, s.tokenizer, self.eval_examples, self.step,
                                             stop_token_ids=s.stop_ids))
                self.logger.log(self.step, last)
                if cfg.trainer.save_every and self.step % cfg.trainer.save_every == 0:
                    self.save()
            if self.step != self._saved_step:  # a resume of a finished run has nothing new to save
                self.save()
            if cfg.trainer.export_hf:
                s.student.export(s.output_dir / "hf")
        finally:
            self.logger.close()
            try:
                self.rollouts.close()
            finally:
                s.close()
        return last

    def _eval_due(self) -> bool:
        every = self.config.trainer.eval_every
        if not self.eval_examples:
            return False
        return self.step == self.config.trainer.steps or bool(every and self.step % every == 0)

    def save(self) -> None:
        s = self.parts
        state = TrainerState(step=self.step, data=s.prompts.state_dict(), weight_version=self.weight_version,
                             rollouts_ahead=self.rollouts.state_dict(), config=run_config_to_dict(self.config))
        state.save(s.checkpoint_dir, s.student.policy.chunks, s.student.policy.optimizer,
                   keep=self.config.trainer.keep_checkpoints, arch=s.student.arch,
                   tokenizer_dir=self.config.model.student)
        self._saved_step = self.step

    # ---------------------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, s = self.config, self.parts
        times: dict[str, float] = {}
        step_start = time.perf_counter()

        t = time.perf_counter()
        pause_point("generation", self.step + 1)
        # sync: generate this step's batch now; async: take the batch generated during the previous step and ask
        # the engine process for the next one (with the weights it holds now), to come while this step trains.
        rollouts, ahead_metrics = self.rollouts.take(self.step, self.weight_version)
        times["time/generation"] = time.perf_counter() - t
        self._probe_next_syncs_with(rollouts)

        batch, metrics = to_sequence_batch(
            rollouts, pad_id=s.pad_id, skip_uniform_groups=cfg.trainer.skip_uniform_groups,
            only_correct=teacher_use(cfg.loss) == "samples",  # offline distillation: the teacher's correct samples
            truncation=TruncationPolicy(cfg.rollout.truncated, cfg.rollout.max_new_tokens,
                                        cfg.rollout.overlong_cache, cfg.rollout.overlong_penalty),
            pass_rates="teacher_pass_rate" in self.needs,  # per response: travels with the rows like advantages
        )
        metrics.update(ahead_metrics)
        if self.router is not None:  # the fraction of this rank's prompts routed to each teacher (averaged over DP)
            metrics.update(route_shares(self.router.names, batch.teacher_index, rollouts.group_size))
        # A teacher pool of its own scores while the learner computes (async: it was asked as soon as the engine's
        # batch arrived; this is then a no-op); its reply is taken after the old-policy and reference passes.
        pooled = bool(self.needs & TEACHER_INPUTS) and s.teacher.separate
        if pooled:
            s.teacher.prefetch(batch)
        metrics = self._average_over_dp(metrics)
        times["time/teacher"] = 0.0
        if cfg.trainer.max_tokens_per_micro_batch is not None and s.layout.dp > 1:
            # Token-budget micro-batches: deal the step's sequences over the DP ranks by token work (the advantages
            # and the global mini-batches stay as they are; see learner/balance.py).
            if pooled:  # the pool scored this rank's rows: take its reply before they move (the balance carries it)
                t = time.perf_counter()
                self._score_with_teacher(batch)
                pooled = False
                times["time/teacher"] = time.perf_counter() - t
            batch = balance_over_data_parallel(batch, group_size=rollouts.group_size,
                                               updates=cfg.trainer.updates_per_batch, pad_id=s.pad_id,
                                               group=data_parallel_group())

        # Exactly the inputs the loss asks for (loss.required_inputs), nothing more.
        t = time.perf_counter()
        pause_point("teacher", self.step + 1)
        if self.needs & TEACHER_INPUTS and not s.teacher.separate:
            self._score_with_teacher(batch)
        times["time/teacher"] += time.perf_counter() - t

        if "ref_logprobs" in self.needs:  # the frozen initial student, for the reference-KL term
            batch.ref_logprobs = s.reference.token_logprobs(batch)

        t = time.perf_counter()
        if "old_logprobs" in self.needs and rollouts.weight_version != self.weight_version:
            # Sampled by an older policy (async): the PPO/TRRD ratio and TIS are taken to the policy that sampled
            # the tokens, i.e. the engine's own log-probs (the sync probe checks they are the learner's at that
            # version), never to the current one.
            batch.old_logprobs = batch.engine_logprobs.clone()
        elif "old_logprobs" in self.needs and cfg.trainer.updates_per_batch > 1:
            # With one update per batch the old policy is the current one: the loss takes logprobs.detach().
            batch.old_logprobs = s.student.policy.token_logprobs(batch, MicroBatching.for_forward(cfg.trainer))
        times["time/old_logprobs"] = time.perf_counter() - t
        if pooled:  # the teacher pool's reply (waited for only if it is not there yet)
            t = time.perf_counter()
            self._score_with_teacher(batch)
            times["time/teacher"] += time.perf_counter() - t

        t = time.perf_counter()
        pause_point("train", self.step + 1)
        metrics.update(self._update_policy(batch, rollouts.group_size))
        times["time/train"] = time.perf_counter() - t

        # async: wait for the next batch (generated while this step trained): the engine must be idle for the
        # weight sync, the probe, evaluation and a checkpoint (which stores that batch).
        wait = self.rollouts.finish_step()
        times["time/generation"] += wait
        metrics["rollout/ahead_wait_s"] = wait

        t = time.perf_counter()
        pause_point("sync", self.step + 1)
        metrics.update(self._sync_weights())
        times["time/sync"] = time.perf_counter() - t

        times["time/step"] = time.perf_counter() - step_start
        times["time/other"] = times["time/step"] - sum(v for k, v in times.items() if k != "time/step")
        metrics.update(times)
        metrics.update(self._timeline(times))
        metrics["optim/lr"] = lr_at(self.step, cfg)
        metrics["memory/peak_rss_mb"] = _peak_rss_mb()
        return metrics

    def _score_with_teacher(self, batch: SequenceBatch) -> None:
        """The teacher's inputs of the loss on ``batch``: its log-probs of the sampled tokens and (``loss.topk_kl``)
        its top-k ids and log-probs per position (None off the last pipeline stage, where no loss is computed)."""
        s, k = self.parts, self.config.loss.topk_k
        if "teacher_topk_logprobs" not in self.needs:
            batch.teacher_logprobs = s.teacher.token_logprobs(batch)
            return
        if "teacher_logprobs" in self.needs:  # both from one teacher pass
            scores = s.teacher.token_scores(batch, k)
            topk = None if scores is None else scores[1:]
            batch.teacher_logprobs = None if scores is None else scores[0]
        else:
            topk = s.teacher.token_topk(batch, k)
        if topk is not None:
            batch.teacher_topk_logprobs, batch.teacher_topk_ids = topk[0].float(), topk[1].int()

    _SUMMED_OVER_DP = ("rollout/generated_tokens", "rollout/sequence_tokens", "groups/kept_sequences", "reward/errors",
                       "rollout/stale_dropped")

    def _average_over_dp(self, metrics: dict[str, float]) -> dict[str, float]:
        """Rollout statistics of the whole step: counts summed over data-parallel ranks, the rest averaged."""
        group = data_parallel_group()
        maxima = sorted(k for k in metrics if k.endswith("_max"))
        keys = sorted(k for k in metrics if k not in maxima)
        device = collective_device(group)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(values, group=group)
        top = torch.tensor([metrics[k] for k in maxima], dtype=torch.float64, device=device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        _, dp = data_parallel_rank_and_size()
        out = {k: v if k in self._SUMMED_OVER_DP else v / dp for k, v in zip(keys, values.tolist())}
        out.update(zip(maxima, top.tolist()))
        return out

    def _update_policy(self, batch: SequenceBatch, group_size: int) -> dict[str, float]:
        cfg, s, needs = self.config, self.parts, self.needs
        s.student.policy.set_lr(lr_at(self.step, cfg))
        progress = self.step / max(1, cfg.trainer.steps - 1)
        updates = cfg.trainer.updates_per_batch
        # Mini-batch u takes every updates-th prompt group. Data-parallel ranks hold contiguous blocks of groups
        # (with a group count divisible by updates), so the union over ranks is the same global mini-batch
        # whatever the layout; after a rebalance over DP each row carries its mini-batch.
        mini_of_row = batch.mini_batch if batch.mini_batch is not None else mini_batch_of_rows(
            len(batch), group_size, updates)
        acc = MetricAccumulator()
        teacher_weight = None  # several teachers: [number of teachers] float64, each one's teacher.teachers weight
        if self.router is not None:
            teacher_weight = torch.tensor([t.weight for t in cfg.teacher.teachers], dtype=torch.float64)
        moe_sums: dict[str, float] = {}
        applied, grad_norms, empty = 0, [], 0
        for u in range(updates):
            mini = batch.select((mini_of_row == u).nonzero().flatten())
            denominators = _global_denominators(mini, data_parallel_group())
            if denominators.num_seqs == 0:  # every group uniform (or nothing correct for sft): no signal
                empty += 1
                continue

            def loss_fn(logprobs, entropy, mb: SequenceBatch, topk_logprobs=None):
                old = None
                if "old_logprobs" in needs:
                    old = mb.old_logprobs if mb.old_logprobs is not None else logprobs.detach()
                weights = None
                if cfg.rollout.tis_cap is not None and old is not None:  # TIS corrects the old policy's samples
                    weights = tis_weights(old, mb.engine_logprobs, cfg.rollout.tis_cap)
                loss, stats = compute_policy_loss(
                    cfg.loss, logprobs=logprobs, mask=mb.loss_mask, denominators=denominators,
                    old_logprobs=old, teacher_logprobs=mb.teacher_logprobs, ref_logprobs=mb.ref_logprobs,
                    advantages=mb.advantages, entropy=entropy, correct=mb.correct, progress=progress,
                    token_weights=weights, teacher_pass_rate=mb.teacher_pass_rate,
                    student_topk_logprobs=topk_logprobs, teacher_topk_logprobs=mb.teacher_topk_logprobs,
                    teacher_weight=None if self.router is None else teacher_weight[mb.teacher_index.cpu()].to(
                        logprobs.device),
                )
                if self.router is not None:  # teacher/<name>/kl and /agreement over each teacher's tokens
                    stats.update(per_teacher_stats(self.router.names, mb.teacher_index, logprobs,
                                                   mb.teacher_logprobs, mb.loss_mask))
                return loss, stats

            result = s.student.policy.train_step(mini, loss_fn, MicroBatching.for_training(cfg.trainer))
            for stats in result.metrics:
                acc.add(stats)
            for key, value in result.moe.items():  # MoE students: router load-balancing loss
                moe_sums[key] = moe_sums.get(key, 0.0) + value / updates
            if result.applied:
                applied += 1
                grad_norms.append(result.grad_norm)
        out = _reduce_metrics(acc, is_last_pipeline_stage(), s.model_parallel_group)
        out = {k if k.startswith("teacher/") else f"loss/{k}": v for k, v in out.items()}
        out.update(moe_sums)
        out["optim/applied_updates"] = float(applied)
        out["optim/empty_updates"] = float(empty)
        if grad_norms:
            out["optim/grad_norm"] = float(sum(grad_norms) / len(grad_norms))
        skipped = updates - applied - empty
        out["optim/skipped_updates"] = float(skipped)
        if skipped:
            self.logger.note(f"step {self.step}: {skipped} update(s) skipped (non-finite loss or gradient)")
        self.non_finite.record(self.step, skipped)
        return out

    def _timeline(self, times: dict[str, float]) -> dict[str, float]:
        """Each pool's busy and waiting seconds in this step (trainer/step/timeline.py)."""
        cfg, s = self.config, self.parts
        teacher = "teacher_logprobs" in self.needs
        return pool_timeline(
            step_s=times["time/step"], generation_wait_s=times["time/generation"],
            rollout_busy_s=s.engine.last_generate_s if s.engine is not None else times["time/generation"],
            rollout_apart=cfg.rollout.placement == "disaggregated",
            teacher_wait_s=times["time/teacher"] if teacher else None,
            teacher_busy_s=s.teacher.last_busy_s if teacher and s.teacher.separate else None,
            teacher_apart=teacher and s.teacher.separate,
            teacher_asked_ahead=teacher and s.teacher.separate and s.teacher.last_asked_at_arrival)

    def _rollout_pipeline(self) -> RolloutPipeline:
        """This run's source of rollouts (``rollout.mode``; trainer/step/rollout_pipeline.py)."""
        cfg, s = self.config, self.parts
        r = cfg.rollout
        ahead = r.mode == "async" and r.max_staleness >= 1

        def sampling_for(step: int, prompts: int) -> SamplingSettings:
            return SamplingSettings(  # rollout.group_size is read here only: batches carry it on (Rollouts.group_size)
                n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
                stop_token_ids=s.stop_ids,
                # The engine seeds prompt j's i-th response with seed + j * n + i: offsetting by this rank's first
                # global prompt makes the samples independent of the data-parallel layout.
                seed=cfg.trainer.seed * 1_000_003 + step * 100_003 + s.dp_rank * prompts * r.group_size
                if s.seed_requests else None,
            )

        def generate_now(examples, sampling: SamplingSettings):
            if s.engine is None:
                return None
            if r.sleep_level:  # no-ops when the sync has woken it (sft: nothing else wakes it)
                s.engine.wake_up("weights")
                s.engine.wake_up("kv_cache")
            out = generate_and_score(s.engine, s.reward_guard, examples, sampling, self.router)
            if r.sleep_level:  # free the engine's GPU memory for the learner until the next sync
                s.engine.sleep(r.sleep_level)
            return out

        on_generated = None
        if "teacher_logprobs" in self.needs and s.teacher.separate:
            def on_generated(results) -> None:  # the teacher pool scores batch t + 1 while the learner trains on t
                s.teacher.prefetch_rows([list(res.prompt_token_ids) + list(c.token_ids)
                                         for res in results for c in res.completions])

        return RolloutPipeline(
            s.engine, s.reward_guard, s.prompts, sampling_for, generate=generate_now, ahead=ahead,
            max_staleness=r.max_staleness if r.mode == "async" else 0,
            share=lambda value: share_from_one(value, s.model_parallel_group), owner=[s.dp_rank, s.layout.dp],
            on_generated=on_generated, route=self.router,
        )

    def _probe_next_syncs_with(self, rollouts: Rollouts | None) -> None:
        """The sync check scores a few of this step's own samples with both sides (one engine prefill, one small
        learner forward) instead of sampling new ones after every sync (weight_sync/verify.py)."""
        verifier = getattr(self.parts.synchronizer, "verifier", None)
        if verifier is not None and rollouts is not None:
            verifier.use_samples(probe_from_samples(rollouts.prompt_ids, rollouts.response_ids, rollouts.group_size))

    def _sync_weights(self) -> dict[str, float]:
        s = self.parts
        if s.synchronizer is None:  # sft: the engine serves the teacher
            return {}
        self.weight_version += 1
        metrics = s.synchronizer.sync(s.student.modules, s.student.arch, self.weight_version)
        return share_from_one(metrics or None, s.model_parallel_group, required=False) or {}


def train(config: RunConfig, *, resume: bool = False, check: bool = True) -> dict[str, float]:
    """Check the run (every problem in one :class:`RunCheckError`, before any model loads), then build and train
    it. ``check=False``: the caller checked it already (``rlad-megatron train``)."""
    if check:
        check_run(config)
    return Trainer(config, resume=resume).fit()


__all__ = ["Trainer", "TrainingStopped", "train", "lr_at", "MegatronPolicy"]
