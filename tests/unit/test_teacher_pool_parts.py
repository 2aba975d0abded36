"""The teacher pool's parts that need no process group: the configuration rules (teacher.placement and the S2
refusal), the role split of a job, the vLLM teacher client's queue (one request at the engine at a time, from two
threads), the pooled teacher's matching of a prefetched request by its rows, and the step timeline by pool."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from rlad_megatron.config import ConfigError, load_run_config, teacher_pool
from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
from rlad_megatron.pools.client import EngineScoreClient
from rlad_megatron.pools.wire import ScoreReply, ScoreRequest
from rlad_megatron.pools.world import role_split
from rlad_megatron.pools.teacher import PooledTeacher, request_of
from rlad_megatron.trainer.step.timeline import pool_timeline

BASE = ["model.student=/s", "model.teacher=/t", "data.train_files=a.jsonl"]


def test_teacher_placement_keys_and_their_rules():
    megatron = load_run_config(None, BASE + ["teacher.placement=separate", "teacher.ranks=4",
                                             "teacher.tensor_parallel=2", "teacher.expert_parallel=2"])
    assert teacher_pool(megatron) == "megatron"
    vllm = load_run_config(None, BASE + ["teacher.placement=separate", "teacher.source=vllm",
                                         "rollout.placement=disaggregated"])
    assert teacher_pool(vllm) == "vllm"
    assert teacher_pool(load_run_config(None, BASE)) == "none"
    bad = {
        "needs teacher.ranks .* a positive multiple of teacher.tensor_parallel x teacher.pipeline_parallel = 2":
            ["teacher.placement=separate", "teacher.ranks=3", "teacher.tensor_parallel=2"],
        "teacher.expert_parallel=4 must divide teacher.ranks / teacher.pipeline_parallel = 2":
            ["teacher.placement=separate", "teacher.ranks=2", "teacher.expert_parallel=4"],
        "lay out a Megatron teacher pool of its own: set teacher.placement=separate":
            ["teacher.ranks=2"],
        "loss.algorithm='grpo' takes no teacher log-probs": ["teacher.placement=separate", "teacher.ranks=1",
                                                            "loss.algorithm=grpo"],
        # issue 29's S2: a vLLM teacher inside the learner's process next to a disaggregated engine
        "set teacher.placement=separate \\(the teacher in engine processes of its own":
            ["teacher.source=vllm", "rollout.placement=disaggregated"],
        "teacher.placement='apart': choose one of": ["teacher.placement=apart"],
    }
    for message, overrides in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_run_config(None, BASE + overrides)


def test_the_last_ranks_of_a_job_teach():
    assert [role_split(r, 4, 1) for r in range(4)] == [("learner", 0, 3), ("learner", 1, 3), ("learner", 2, 3),
                                                       ("teacher", 0, 1)]
    assert role_split(9, 16, 8) == ("teacher", 1, 8) and role_split(7, 16, 8) == ("learner", 7, 8)
    with pytest.raises(ConfigError, match="teacher.ranks=2 leaves no learner rank in a job of 2 ranks"):
        role_split(0, 2, 2)


class _TeacherEngine:
    """A teacher engine process's client: one request at a time; each score is the token id / 10."""

    def __init__(self) -> None:
        self.sent: list[list[list[int]]] = []
        self.inflight: list[list[int]] | None = None

    def request_score(self, rows, prompt_lens, topk=0):
        assert self.inflight is None, "the engine serves one request at a time"
        assert topk == 0
        assert prompt_lens == [1] * len(rows)
        self.inflight = rows
        self.sent.append(rows)

    def collect_score(self):
        time.sleep(0.01)
        rows, self.inflight = self.inflight, None
        return [[t / 10 for t in row[1:]] for row in rows], 0.25

    def shutdown(self):
        pass


def test_vllm_teacher_client_queues_requests_and_serves_them_in_order_from_two_threads():
    engine = _TeacherEngine()
    client = EngineScoreClient(engine)
    first = client.submit(ScoreRequest.from_rows([[1, 2, 3], [4, 5]]))
    done = threading.Event()
    later: list = []
    thread = threading.Thread(target=lambda: (later.append(client.submit(ScoreRequest.from_rows([[7, 8]]))),
                                              done.set()))
    thread.start()
    assert done.wait(5)
    assert len(engine.sent) == 1  # the second waits until the first is collected
    reply = client.collect(first)
    assert torch.allclose(reply.logprobs, torch.tensor([[0.2, 0.3], [0.5, 0.0]])) and reply.busy_s == 0.25
    assert len(engine.sent) == 2 and torch.allclose(client.collect(later[0]).logprobs, torch.tensor([[0.8]]))
    with pytest.raises(RuntimeError, match="never submitted"):
        client.collect(99)


class _Client:
    """A pool that answers every row with its token ids / 10 and records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[ScoreRequest] = []

    def submit(self, request: ScoreRequest) -> int:
        self.asked.append(request)
        return len(self.asked) - 1

    def collect(self, ticket: int) -> ScoreReply:
        request = self.asked[ticket]
        mask = torch.arange(request.width - 1).unsqueeze(0) < (request.lengths - 1).unsqueeze(1)
        return ScoreReply(torch.where(mask, request.tokens[:, 1:].float() / 10, torch.zeros(())), busy_s=0.5)

    def close(self) -> None:
        pass


def _batch(responses: list[list[int]]) -> SequenceBatch:
    prompts = [[1, 2]] * len(responses)
    tokens, mask, engine = pack_sequences(prompts, responses, [[0.0] * len(r) for r in responses], pad_id=0,
                                          pad_to_multiple=8)
    n = len(responses)
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(n), rewards=torch.zeros(n),
                         correct=torch.zeros(n, dtype=torch.bool), engine_logprobs=engine,
                         lengths=torch.tensor([2 + len(r) for r in responses]))


def test_pooled_teacher_takes_the_prefetched_reply_of_the_same_rows_and_drains_others(monkeypatch):
    from megatron.core import parallel_state as ps

    monkeypatch.setattr(ps, "is_pipeline_last_stage", lambda ignore_virtual=True: True)
    client = _Client()
    teacher = PooledTeacher(client, None, leader=0)
    batch = _batch([[5, 6, 7], [8]])
    teacher.prefetch_rows([[1, 9, 9]])  # a batch that was dropped: asked, never used
    teacher.prefetch_rows([[1, 2, 5, 6, 7], [1, 2, 8]])  # this batch's rows, as the engine delivered them
    teacher.prefetch(batch)  # already asked: not asked again
    assert len(client.asked) == 2
    out = teacher.token_logprobs(batch)
    assert out.shape == (2, 7) and teacher.last_asked_at_arrival and teacher.last_busy_s == 0.5
    assert out[0, :4].tolist() == pytest.approx([0.2, 0.5, 0.6, 0.7]) and out[0, 4:].abs().sum() == 0
    assert out[1, :2].tolist() == pytest.approx([0.2, 0.8])
    assert torch.equal(request_of(batch).lengths, torch.tensor([5, 3]))
    again = teacher.token_logprobs(_batch([[3]]))  # nothing prefetched: asked now
    assert len(client.asked) == 3 and not teacher.last_asked_at_arrival and again[0, 1] == pytest.approx(0.3)


def test_the_step_timeline_by_pool():
    apart = pool_timeline(step_s=2.0, generation_wait_s=0.1, rollout_busy_s=0.8, rollout_apart=True,
                          teacher_wait_s=0.3, teacher_busy_s=1.2, teacher_apart=True, teacher_asked_ahead=True)
    assert apart["timeline/learner_busy"] == pytest.approx(1.6) and apart["timeline/learner_wait"] == pytest.approx(0.4)
    assert apart["timeline/rollout_idle_frac"] == pytest.approx(0.6)
    assert apart["timeline/teacher_busy"] == 1.2 and apart["timeline/teacher_asked_at_arrival"] == 1.0
    together = pool_timeline(step_s=2.0, generation_wait_s=0.5, rollout_busy_s=0.0, rollout_apart=False,
                             teacher_wait_s=0.7)
    assert together["timeline/learner_busy"] == 2.0 and together["timeline/rollout_busy"] == 0.5
    assert together["timeline/teacher_busy"] == 0.7 and "timeline/teacher_asked_at_arrival" not in together
    grpo = pool_timeline(step_s=1.0, generation_wait_s=0.5, rollout_busy_s=0.0, rollout_apart=False)
    assert not any(k.startswith("timeline/teacher") for k in grpo)


class _TopkClient(_Client):
    """Also the top-k the request asks for: ids token + j, log-probs -j - token / 10 (j = 0..k-1)."""

    def collect(self, ticket: int) -> ScoreReply:
        reply, request = super().collect(ticket), self.asked[ticket]
        k = request.topk
        mask = (torch.arange(request.width - 1).unsqueeze(0) < (request.lengths - 1).unsqueeze(1)).unsqueeze(-1)
        ids = request.tokens[:, 1:].unsqueeze(-1) + torch.arange(k)
        reply.topk_ids = torch.where(mask, ids, torch.zeros((), dtype=ids.dtype)).int()
        reply.topk_logprobs = torch.where(mask, -torch.arange(k) - ids / 10.0, torch.zeros(())).float()
        return reply


def test_pooled_teacher_serves_log_probs_and_top_k_from_one_reply(monkeypatch):
    from megatron.core import parallel_state as ps

    monkeypatch.setattr(ps, "is_pipeline_last_stage", lambda ignore_virtual=True: True)
    client = _TopkClient()
    teacher = PooledTeacher(client, None, leader=0, topk=3)
    batch = _batch([[5, 6, 7], [8]])
    teacher.prefetch(batch)
    assert client.asked[0].topk == 3
    lp, ids = teacher.token_topk(batch, 3)
    logprobs, lp2, ids2 = teacher.token_scores(batch, 3)
    assert len(client.asked) == 1  # one request, one reply for both
    assert torch.equal(lp, lp2) and torch.equal(ids, ids2) and ids.dtype == torch.long
    assert ids[0, 1].tolist() == [5, 6, 7] and lp[0, 1].tolist() == pytest.approx([-0.5, -1.6, -2.7])
    assert logprobs[0, :4].tolist() == pytest.approx([0.2, 0.5, 0.6, 0.7]) and not ids[1, 2:].any()
    with pytest.raises(ValueError, match="top-3, not 4"):
        teacher.token_topk(batch, 4)


def test_vllm_teacher_engine_reply_with_top_k():
    from rlad_megatron.pools.client import _engine_reply

    request = ScoreRequest.from_rows([[1, 2, 3], [4]], topk=2)
    reply = _engine_reply(request, [([-0.1, -0.2], [[2, 9], [3, 8]], [[-0.1, -3.0], [-0.2, -4.0]]), ([], [], [])],
                          0.5)
    assert torch.allclose(reply.logprobs, torch.tensor([[-0.1, -0.2], [0.0, 0.0]])) and reply.busy_s == 0.5
    assert reply.topk_ids.tolist() == [[[2, 9], [3, 8]], [[0, 0], [0, 0]]] and reply.topk_ids.dtype == torch.int32
    assert torch.allclose(reply.topk_logprobs[0], torch.tensor([[-0.1, -3.0], [-0.2, -4.0]]))
    assert not reply.topk_logprobs[1].any()
