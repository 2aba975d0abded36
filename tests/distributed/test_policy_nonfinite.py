"""A non-finite loss on any micro-batch of any rank skips the optimizer step on every rank, leaving the weights
untouched; the next finite step is applied."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


def _nan_then_finite() -> dict:
    import torch.distributed as dist

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.learner.sequences import SequenceBatch
    from rlad_megatron.testing.gather import gather_full
    from rlad_megatron.testing.tiny_gpt import VOCAB, tiny_config, tiny_gpt

    wrapped, optimizer = build_student([tiny_gpt(tiny_config())], OptimConfig(lr=1e-2))
    policy = MegatronPolicy(wrapped, VOCAB, optimizer=optimizer)
    g = torch.Generator().manual_seed(dist.get_rank())
    tokens = torch.randint(0, VOCAB, (4, 16), generator=g)
    batch = SequenceBatch(tokens=tokens, loss_mask=torch.ones(4, 15, dtype=torch.bool), advantages=torch.zeros(4),
                          rewards=torch.zeros(4), correct=torch.zeros(4, dtype=torch.bool),
                          engine_logprobs=torch.zeros(4, 15))
    calls = {"n": 0}

    def poisoned(logprobs, entropy, mb):
        calls["n"] += 1
        loss = -logprobs.mean()
        if dist.get_rank() == 0 and calls["n"] == 2:  # rank 0's second micro-batch only
            loss = loss * float("nan")
        return loss, {}

    before = gather_full(wrapped[0])
    skipped = policy.train_step(batch, poisoned, batching=2)
    after_skip = gather_full(wrapped[0])
    applied = policy.train_step(batch, lambda lp, e, mb: (-lp.mean(), {}), batching=2)
    after_step = gather_full(wrapped[0])
    return {
        "skipped_applied": skipped.applied,
        "unchanged": all(torch.equal(before[k], after_skip[k]) for k in before),
        "applied": applied.applied,
        "moved": max(float((after_step[k] - before[k]).abs().max()) for k in before),
    }


def test_nonfinite_loss_skips_step_on_all_ranks() -> None:
    for result in run_distributed(_nan_then_finite, 2, timeout=180):  # DP=2: only rank 0 sees the NaN
        assert result["skipped_applied"] is False
        assert result["unchanged"]
        assert result["applied"] is True and result["moved"] > 1e-4
