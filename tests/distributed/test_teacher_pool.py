"""The teacher pool on gloo ranks (rlad_megatron/pools/): the wire and the serving loop against a plain reference
scorer, and a real Megatron teacher on ranks of its own against the colocated Megatron teacher.

- wire: two clients and one pool replica (their rows scored together in one round), one client and two replicas (its
  rows dealt over both by token work; a request smaller than the pool leaves a replica an empty round), requests in
  flight together and collected out of order, rows of one token (nothing to score), top-k carried back;
- Megatron: the job split by role (the last ranks teach), the learner at DP=2 with a one-rank pool, and a learner
  rank with a pool at TP=2 (the replica shares the last stage's result): the pooled teacher's log-probs equal the
  colocated teacher's on every target position up to float32 rounding (2e-6 on values near -5), zeros elsewhere;
  the pool's fixed micro-batches are filled up with filler rows, and a stale prefetch is drained, not used.
"""
from __future__ import annotations

import datetime

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

VOCAB = 16


def _table() -> torch.Tensor:
    return torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(0))


def reference_reply(request, topk: int = 0):
    """A bigram "teacher": log p(t+1 | t) = log_softmax(table[t]); top-k of the same distribution."""
    from rlad_megatron.pools.wire import ScoreReply

    tokens = request.tokens.long()
    logp = torch.log_softmax(_table()[tokens[:, :-1]], dim=-1)
    values = logp.gather(-1, tokens[:, 1:, None])[..., 0]
    mask = torch.arange(request.width - 1).unsqueeze(0) < (request.lengths - 1).unsqueeze(1)
    reply = ScoreReply(torch.where(mask, values, torch.zeros(())))
    if topk:
        top = logp.topk(topk, dim=-1)
        reply.topk_logprobs = torch.where(mask[..., None], top.values, torch.zeros(()))
        reply.topk_ids = torch.where(mask[..., None], top.indices, torch.zeros((), dtype=torch.long)).int()
    return reply


def _requests(seed: int, topk: int):
    from rlad_megatron.pools.wire import ScoreRequest

    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (5, 1, 3):
        lengths = torch.randint(1, 12, (n,), generator=gen)
        lengths[0] = 1  # a row of one token: nothing to score
        rows = [torch.randint(0, VOCAB, (int(length),), generator=gen).tolist() for length in lengths]
        out.append(ScoreRequest.from_rows(rows, topk=topk))
    return out


def _wire_body(clients: list[int], servers: list[int], topk: int) -> dict:
    import torch.distributed as dist

    from rlad_megatron.pools.client import MegatronPoolClient
    from rlad_megatron.pools.server import serve

    rank, size = dist.get_rank(), dist.get_world_size()
    store = dist.distributed_c10d._get_default_store()
    bridge = dist.ProcessGroupGloo(dist.PrefixStore("bridge", store), rank, size, datetime.timedelta(seconds=60))
    if rank in servers:
        rounds = serve(lambda req: reference_reply(req, req.topk), bridge=bridge, clients=clients,
                       replica_group=None, leader=rank, holder=rank)
        return {"rounds": rounds}
    client = MegatronPoolClient(bridge, servers)
    requests = _requests(seed=rank, topk=topk)
    tickets = [client.submit(r) for r in requests]  # all in flight at once
    worst = 0.0
    for request, ticket in reversed(list(zip(requests, tickets))):  # collected out of order
        got, want = client.collect(ticket), reference_reply(request, topk)
        assert got.logprobs.shape == want.logprobs.shape
        worst = max(worst, float((got.logprobs - want.logprobs).abs().max()))
        if topk:
            assert torch.equal(got.topk_ids, want.topk_ids)
            worst = max(worst, float((got.topk_logprobs - want.topk_logprobs).abs().max()))
        assert got.busy_s > 0
    client.close()
    return {"worst": worst}


def test_two_clients_one_replica_with_topk():
    results = run_distributed(_wire_body, world_size=3, init_megatron=False, args=([0, 1], [2], 3), timeout=120)
    assert results[2] == {"rounds": 3}  # each round holds both clients' rows
    assert results[0]["worst"] == 0.0 and results[1]["worst"] == 0.0


def test_one_client_two_replicas_dealt_by_work():
    results = run_distributed(_wire_body, world_size=3, init_megatron=False, args=([0], [1, 2], 0), timeout=120)
    assert results[1] == {"rounds": 3} and results[2] == {"rounds": 3}  # the 1-row request: an empty round for one
    assert results[0]["worst"] == 0.0


# --------------------------------------------------------------------------------------------- a Megatron teacher
def _batch(seed: int):
    from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences

    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(4, 90, (int(torch.randint(3, 8, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(6)]
    responses = [torch.randint(4, 90, (int(torch.randint(1, 10, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(6)]
    tokens, mask, engine = pack_sequences(prompts, responses, [[0.0] * len(r) for r in responses], pad_id=0)
    lengths = torch.tensor([len(p) + len(r) for p, r in zip(prompts, responses)])
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(6), rewards=torch.zeros(6),
                         correct=torch.zeros(6, dtype=torch.bool), engine_logprobs=engine, lengths=lengths)


def _megatron_pool_body(teacher_dir: str, teacher_ranks: int, teacher_tp: int) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron import parallel
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.pools.build import replica_leader
    from rlad_megatron.pools.client import MegatronPoolClient
    from rlad_megatron.pools.server import serve
    from rlad_megatron.pools.teacher_rank import megatron_scorer
    from rlad_megatron.pools.world import bridge_group, split_world
    from rlad_megatron.pools.teacher import PooledTeacher
    from rlad_megatron.teacher import MegatronTeacher

    job = split_world(teacher_ranks)
    learners, teachers = job.learner_ranks, teacher_ranks // teacher_tp
    micro = MicroBatching(micro_batch_size=2)
    if job.role == "teacher":
        parallel.initialize_model_parallel(teacher_tp, 1, seed=3)
        # micro-batches of 4 rows: a round of 6 rows (one client) gets 2 filler rows
        teacher = MegatronTeacher.load(teacher_dir, batching=MicroBatching(micro_batch_size=4),
                                       params_dtype=torch.float32)
        group = parallel.replica_group()
        leader = replica_leader(group)
        holder = leader  # PP=1: the first rank of the replica holds the log-probs
        bridge = None
        if dist.get_rank() == leader:
            bridge = bridge_group(job, learners + ps.get_data_parallel_rank(), learners + teachers)
        rounds = serve(megatron_scorer(teacher), bridge=bridge, clients=list(range(learners)),
                       replica_group=group, leader=leader, holder=holder)
        return {"role": "teacher", "rounds": rounds}
    parallel.initialize_model_parallel(1, 1, seed=3)
    dp = ps.get_data_parallel_rank()
    bridge = bridge_group(job, dp, learners + teachers)
    pooled = PooledTeacher(MegatronPoolClient(bridge, list(range(learners, learners + teachers))),
                           parallel.replica_group(), leader=dist.get_rank())
    batch = _batch(seed=10 + dp)
    stale = _batch(seed=99)
    pooled.prefetch(stale)  # asked, never used: drained before the batch's own request
    pooled.prefetch(batch)
    got = pooled.token_logprobs(batch)
    busy = pooled.last_busy_s
    again = pooled.token_logprobs(_batch(seed=20 + dp))  # nothing prefetched: asked and waited for
    pooled.close()
    colocated = MegatronTeacher.load(teacher_dir, batching=micro, params_dtype=torch.float32)
    want = colocated.token_logprobs(batch)
    want_again = colocated.token_logprobs(_batch(seed=20 + dp))
    targets = torch.arange(batch.tokens.shape[1] - 1).unsqueeze(0) < (batch.lengths - 1).unsqueeze(1)
    second = _batch(seed=20 + dp)
    targets2 = torch.arange(second.tokens.shape[1] - 1).unsqueeze(0) < (second.lengths - 1).unsqueeze(1)
    return {"role": "learner", "busy": busy, "scale": float(want[targets].abs().mean()),
            "diff": float((got - want)[targets].abs().max()),
            "diff_again": float((again - want_again)[targets2].abs().max()),
            "outside": float(got[~targets].abs().max())}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> str:
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    return str(make_tiny_hf_model(tmp_path_factory.mktemp("pool") / "teacher", num_layers=2, hidden_size=64,
                                  intermediate_size=128, num_heads=4, num_kv_heads=2, seed=4))


@pytest.mark.parametrize("learners,teacher_ranks,teacher_tp", [(2, 1, 1), (1, 2, 2)], ids=["dp2_pool1", "pool_tp2"])
def test_megatron_pool_equals_colocated_teacher(teacher_dir, learners, teacher_ranks, teacher_tp):
    results = run_distributed(_megatron_pool_body, world_size=learners + teacher_ranks, init_megatron=False,
                              args=(teacher_dir, teacher_ranks, teacher_tp), timeout=300)
    served = [r for r in results if r["role"] == "teacher"]
    assert served and all(r["rounds"] == 3 for r in served)  # stale prefetch, the batch, the unprefetched one
    for r in results:
        if r["role"] != "learner":
            continue
        assert r["scale"] > 0.5  # real log-probs of a random model over ~100 tokens
        # a few float32 ulps of log-probs near -5 (other micro-batch shapes, TP=2 sums in another order): measured
        # 4.8e-7 (DP=2, one pool rank) and 9.5e-7 (pool at TP=2)
        assert r["diff"] <= 2e-6 and r["diff_again"] <= 2e-6, r
        assert r["outside"] == 0.0 and r["busy"] > 0
