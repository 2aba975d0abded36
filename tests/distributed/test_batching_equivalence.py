"""Token-budget and packed micro-batches give the fixed padded path's log-probs, loss, gradient norm and weights
after two optimizer steps, on one rank and at TP=2 (+SP), PP=2 and DP=2, for rlad, grpo and kdrl.

The batch is 8 sequences of random lengths (3..16 tokens) with random per-token teacher / engine values, random
advantages and a prompt of 1..3 tokens each: any misaligned per-token tensor changes the loss. The fixed path
(micro-batches of 2 rows, all padded to the batch's longest) is the reference; the budget path uses 24 tokens per
micro-batch, the packed path rows of 24 tokens with a block-diagonal mask (the oracle on CPU)."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

GLOBAL_BATCH = 8
BUDGET = 24


def _global_batch():
    from rlad_megatron.testing.tiny_gpt import random_sequence_batch

    return random_sequence_batch(GLOBAL_BATCH, seed=11)


def _run_modes(algorithms: tuple[str, ...], sequence_parallel: bool) -> list[dict]:
    """Per algorithm: a fresh student from the same weights for each of the fixed / budget / packed paths."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron.loss import Denominators, local_denominators
    from rlad_megatron.config.loss import LossConfig

    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    per_rank = GLOBAL_BATCH // dp
    batch = _global_batch().select(slice(dp_rank * per_rank, (dp_rank + 1) * per_rank))
    local = local_denominators(batch.loss_mask).as_tensor()
    dist.all_reduce(local, group=ps.get_data_parallel_group())
    denominators = Denominators.from_tensor(local)
    last = ps.is_pipeline_last_stage()
    results = []
    for algorithm in algorithms:
        loss_config = LossConfig(algorithm=algorithm, kd_beta=0.3) if algorithm == "kdrl" else LossConfig(algorithm)
        results += _modes_of(algorithm, loss_config, batch, denominators, sequence_parallel, last)
    return results


def _modes_of(algorithm, loss_config, batch, denominators, sequence_parallel, last) -> list[dict]:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.loss import compute_policy_loss
    from rlad_megatron.testing.gather import gather_full
    from rlad_megatron.testing.tiny_gpt import VOCAB, tiny_config, tiny_gpt

    shares: list[float] = []

    def loss_fn(logprobs, entropy, mb):
        loss, stats = compute_policy_loss(
            loss_config, logprobs=logprobs, mask=mb.loss_mask, denominators=denominators,
            old_logprobs=logprobs.detach(), teacher_logprobs=mb.teacher_logprobs, advantages=mb.advantages,
            correct=mb.correct,
        )
        shares.append(float(loss))  # this micro-batch's share of the global loss
        return loss, stats

    results = []
    modes = {"fixed": 2, "budget": MicroBatching(max_tokens=BUDGET),
             "packed": MicroBatching(max_tokens=BUDGET, packing=True)}
    for name, batching in modes.items():
        config = tiny_config(num_layers=2, sequence_parallel=sequence_parallel)
        # Adam with eps 1: near-SGD steps, which do not amplify float noise in near-zero gradients
        wrapped, optimizer = build_student([tiny_gpt(config)], OptimConfig(lr=0.5, adam_eps=1.0, clip_grad=0.0))
        policy = MegatronPolicy(wrapped, VOCAB, optimizer=optimizer)
        out = {"mode": (algorithm, name), "tp_rank": ps.get_tensor_model_parallel_rank(), "last": last}
        lps = policy.token_logprobs(batch, batching)
        if last:
            out["logprobs"] = lps[batch.loss_mask]
        losses, norms = [], []
        for _ in range(2):
            shares.clear()
            step = policy.train_step(batch, loss_fn, batching)
            assert step.applied
            norms.append(step.grad_norm)
            if last:
                losses.append(torch.tensor(sum(shares), dtype=torch.float64))
        out["grad_norms"] = norms
        if last:
            loss = torch.stack(losses)
            dist.all_reduce(loss, group=ps.get_data_parallel_group())
            out["loss"] = loss.tolist()
        out["params"] = gather_full(wrapped[0])
        results.append(out)
    return results


def _by_mode(per_rank: list[list[dict]]) -> dict[str, dict]:
    merged: dict[str, dict] = {}
    for rank_results in per_rank:
        for r in rank_results:
            m = merged.setdefault(r["mode"], {"params": {}, "logprobs": []})
            if r["tp_rank"] != 0:
                continue
            m["params"].update(r["params"])
            m["grad_norms"] = r["grad_norms"]
            if r["last"]:
                m["loss"] = r["loss"]
                m["logprobs"].append(r["logprobs"])
    for m in merged.values():
        m["logprobs"] = torch.cat(m["logprobs"])
    return merged


def _assert_equivalent(merged: dict, algorithm: str) -> None:
    ref = merged[(algorithm, "fixed")]
    assert abs(ref["loss"][0]) > 1e-4  # a loss that is there to compare
    for mode in ("budget", "packed"):
        got = merged[(algorithm, mode)]
        torch.testing.assert_close(got["logprobs"], ref["logprobs"], rtol=1e-5, atol=1e-5, msg=f"{mode} logprobs")
        for a, b in zip(got["loss"], ref["loss"]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (mode, got["loss"], ref["loss"])
        for a, b in zip(got["grad_norms"], ref["grad_norms"]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (mode, got["grad_norms"], ref["grad_norms"])
        for name, param in ref["params"].items():
            torch.testing.assert_close(got["params"][name], param, rtol=1e-5, atol=1e-6, msg=f"{mode} {name}")


def test_one_rank_rlad_grpo_kdrl() -> None:
    merged = _by_mode(run_distributed(_run_modes, 1, args=(("rlad", "grpo", "kdrl"), False), timeout=300))
    for algorithm in ("rlad", "grpo", "kdrl"):
        _assert_equivalent(merged, algorithm)


LAYOUTS = {  # name: (world_size, tp, pp, sequence_parallel)
    "tp2_sp": (2, 2, 1, True),
    "pp2": (2, 1, 2, False),
    "dp2": (2, 1, 1, False),
    "tp2_pp2": (4, 2, 2, False),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts(layout: str) -> None:
    world, tp, pp, sp = LAYOUTS[layout]
    _assert_equivalent(_by_mode(run_distributed(_run_modes, world, tp=tp, pp=pp, args=(("rlad",), sp), timeout=300)),
                       "rlad")
