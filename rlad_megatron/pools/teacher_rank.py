"""What a teacher rank of the job runs (``teacher.placement: separate``, ``teacher.source: megatron``): the frozen
Megatron teacher with the pool's own TP / PP / EP over the teacher ranks, serving the learner's requests until the
learner stops.

    job = join_job(config)
    if job.role == "teacher":
        serve_teacher(config)
"""
from __future__ import annotations

import torch

from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.pools.wire import ScoreReply, ScoreRequest


def megatron_scorer(teacher, pad_id: int = 0):
    """A :data:`rlad_megatron.pools.server.Scorer` over a :class:`rlad_megatron.teacher.MegatronTeacher`: each row's
    log-probs at every position of its sequence (the learner keeps the response's)."""

    from rlad_megatron.learner.batching import as_micro_batching

    batching = as_micro_batching(teacher.batching)

    def score(request: ScoreRequest) -> ScoreReply | None:
        n, width = len(request), request.width
        lengths = request.lengths
        tokens = request.tokens.long()
        if batching.fixed and n % batching.micro_batch_size:  # fixed micro-batches: whole ones, with filler rows
            fill = batching.micro_batch_size - n % batching.micro_batch_size
            tokens = torch.cat([tokens, torch.zeros(fill, width, dtype=tokens.dtype)])
            lengths = torch.cat([lengths, torch.full((fill,), 2, dtype=lengths.dtype)])
        rows = tokens.shape[0]
        mask = torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
        tokens = torch.where(torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1), tokens,
                             torch.full_like(tokens, pad_id))
        batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(rows), rewards=torch.zeros(rows),
                              correct=torch.zeros(rows, dtype=torch.bool),
                              engine_logprobs=torch.zeros(rows, width - 1, dtype=torch.float32), lengths=lengths)
        topk = None
        if request.topk:  # loss.topk_kl: the top-k too, from the same forward pass
            scores = teacher.token_scores(batch, request.topk)
            logprobs, topk = (None, None) if scores is None else (scores[0], scores[1:])
        else:
            logprobs = teacher.token_logprobs(batch)
        if logprobs is None:  # not the last pipeline stage
            return None
        reply = ScoreReply(torch.where(mask, logprobs.float().cpu(), torch.zeros(()))[:n].contiguous())
        if topk is not None:
            lp, ids = (torch.where(mask.unsqueeze(-1), v.cpu(), torch.zeros((), dtype=v.dtype))[:n].contiguous()
                       for v in topk)
            reply.topk_logprobs, reply.topk_ids = lp.float(), ids.int()
        return reply

    return score


def serve_teacher(config) -> int:
    """Load the teacher on this rank's share of the pool and serve until the learner stops (collective over the
    teacher ranks); returns the rounds served."""
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    from rlad_megatron import parallel
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.models.layout import stage_overrides
    from rlad_megatron.pools.server import serve
    from rlad_megatron.console import say
    from rlad_megatron.pools.world import bridge_group, bridge_sizes, current_job, node_name
    from rlad_megatron.rollout.factory import is_leader_rank
    from rlad_megatron.teacher.megatron import MegatronTeacher

    c, t = config, config.teacher
    job = current_job()
    parallel.initialize_model_parallel(t.tensor_parallel, t.pipeline_parallel, seed=c.trainer.seed,
                                       expert_parallel=t.expert_parallel)
    torch.manual_seed(c.trainer.seed)
    dtype = torch.bfloat16 if c.model.params_dtype == "bfloat16" else torch.float32
    teacher = MegatronTeacher.load(c.model.teacher, batching=MicroBatching.for_forward(c.trainer),
                                   params_dtype=dtype, student_dir=c.model.student, fused_logprobs=c.trainer.fused_logprobs,
                                   sequence_parallel=c.parallel.sequence_parallel and t.tensor_parallel > 1,
                                   **stage_overrides(c.parallel.teacher_first_stage_layers,
                                                     c.parallel.teacher_last_stage_layers))
    tokenizer = AutoTokenizer.from_pretrained(c.model.student, trust_remote_code=c.model.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    group = parallel.replica_group()
    ranks = torch.distributed.get_process_group_ranks(group)
    leaders: list = [None] * len(ranks)
    torch.distributed.all_gather_object(leaders, is_leader_rank(), group=group)
    leader = ranks[leaders.index(True)]
    holders: list = [None] * len(ranks)
    holds = ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0 \
        and ps.get_context_parallel_rank() == 0
    torch.distributed.all_gather_object(holders, holds, group=group)
    holder = ranks[holders.index(True)]
    learners, teachers = bridge_sizes(c, job)
    first = torch.distributed.get_rank() == 0
    if first:
        say(f"[rlad] teacher pool: job ranks {job.learner_ranks}..{job.job_size - 1} (first on node {node_name()}) "
            f"serve {c.model.teacher} at TP={t.tensor_parallel} x PP={t.pipeline_parallel}, EP={t.expert_parallel}: "
            f"{teachers} replica(s) for {learners} learner replica(s)")
    bridge = None
    if torch.distributed.get_rank() == leader:
        bridge = bridge_group(job, learners + ps.get_data_parallel_rank(), learners + teachers)
    try:
        rounds = serve(megatron_scorer(teacher, pad_id), bridge=bridge, clients=list(range(learners)),
                       replica_group=group, leader=leader, holder=holder)
    finally:
        teacher.close()
        parallel.destroy_model_parallel()
    if first:
        say(f"[rlad] teacher pool: served {rounds} round(s); the learner is done")
    return rounds
