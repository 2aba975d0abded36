"""Balanced data parallelism: the step's sequences re-dealt over DP=2 ranks by token work keep every global
mini-batch's membership and every per-token and per-response value aligned (the teacher pass rate and the routed
teacher included), and even out the ranks' tokens."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

GROUP, UPDATES = 2, 2


def _rank_batch(rank: int):
    from rlad_megatron.learner.sequences import SequenceBatch

    # rank 0 generated long responses, rank 1 short ones: 4 prompt groups of 2 each
    lengths = torch.tensor([40, 38, 30, 36, 33, 39, 31, 35]) if rank == 0 else torch.tensor([5, 7, 6, 4, 8, 5, 6, 7])
    n, width = len(lengths), int(lengths.max())
    ids = (rank * 100 + torch.arange(n)).unsqueeze(1)  # a sequence's identity, in every per-token value
    tokens = torch.zeros(n, width, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, :length] = ids[i] * 1000 + torch.arange(length)
    code = (ids * 1000 + torch.arange(width - 1)).float()
    mask = torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=ids.flatten().float(), rewards=ids.flatten().float(),
                         correct=torch.zeros(n, dtype=torch.bool), engine_logprobs=-code, teacher_logprobs=-code - 1,
                         lengths=lengths, teacher_pass_rate=ids.flatten().double() / 1000,
                         teacher_index=ids.flatten() % 3)


def _balance() -> dict:
    import torch.distributed as dist

    from rlad_megatron.learner.balance import balance_over_data_parallel, mini_batch_of_rows

    rank = dist.get_rank()
    local = _rank_batch(rank)
    before = int(local.lengths.sum())
    out = balance_over_data_parallel(local, group_size=GROUP, updates=UPDATES, pad_id=0)
    seqs = []
    for i in range(len(out)):
        n = int(out.lengths[i])
        ident = int(out.tokens[i, 0]) // 1000
        origin = _rank_batch(ident // 100)
        j = ident % 100
        aligned = (torch.equal(out.tokens[i, :n], origin.tokens[j, :n])
                   and torch.equal(out.engine_logprobs[i, :n - 1], origin.engine_logprobs[j, :n - 1])
                   and torch.equal(out.teacher_logprobs[i, :n - 1], origin.teacher_logprobs[j, :n - 1])
                   and torch.equal(out.loss_mask[i, :n - 1], origin.loss_mask[j, :n - 1])
                   and float(out.advantages[i]) == float(origin.advantages[j])
                   and float(out.teacher_pass_rate[i]) == float(origin.teacher_pass_rate[j])
                   and int(out.teacher_index[i]) == int(origin.teacher_index[j]))
        expected_mini = int(mini_batch_of_rows(len(origin), GROUP, UPDATES)[j])
        seqs.append((ident, int(out.mini_batch[i]), expected_mini, aligned))
    return {"before": before, "after": int(out.lengths.sum()), "seqs": seqs}


def test_balance_keeps_mini_batches_and_alignment() -> None:
    results = run_distributed(_balance, 2, init_megatron=False, timeout=120)
    seqs = [s for r in results for s in r["seqs"]]
    assert sorted(s[0] for s in seqs) == sorted([r * 100 + i for r in range(2) for i in range(8)])  # each once
    assert all(mini == expected for _, mini, expected, _ in seqs)  # global mini-batch membership unchanged
    assert all(aligned for *_, aligned in seqs)
    before = [r["before"] for r in results]
    after = [r["after"] for r in results]
    assert max(before) / min(before) > 4 and max(after) / min(after) < 1.2, (before, after)
