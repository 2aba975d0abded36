"""Expert parallelism inside the learner: the EP=1 run on the same two data-parallel ranks is the reference.

Each of the two ranks gets its own batch (different counts and lengths), so its token-budget micro-batches differ in
number and shape from the other rank's, and its fixed-path micro-batches in width. At EP=2 the learner makes every
micro-batch's shape common over the expert-parallel group (learner/expert_parallel.py); nothing else may change:
- a tiny Qwen2-MoE teacher (shared expert) scores the same log-probs at EP=2 as at EP=1 (fixed and budget paths);
- a tiny Qwen3-MoE student with a large router load-balancing weight (0.1) takes two optimizer steps with the same
  loss, gradient norm, load-balancing loss and weights (fp32, 1e-5): the padding never reaches the router's loss.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.distributed

BUDGET = 24
COUNTS = (6, 3)  # sequences on data-parallel rank 0 and 1


def _rank_batch(dp_rank: int):
    from rlad_megatron.learner.sequences import SequenceBatch

    g = torch.Generator().manual_seed(50 + dp_rank)
    n = COUNTS[dp_rank]
    lengths = torch.randint(3, 17 - 4 * dp_rank, (n,), generator=g)  # rank 1's sequences are shorter
    width = int(lengths.max())
    tokens = torch.randint(1, 60, (n, width), generator=g)
    mask = torch.zeros(n, width - 1, dtype=torch.bool)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, length:] = 0
        prompt = 1 + i % 2
        mask[i, prompt - 1:length - 1] = True
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.randn(n, generator=g),
                         rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool),
                         engine_logprobs=torch.zeros(n, width - 1), lengths=lengths)


def _rank_main(teacher_dir: str, student_dir: str) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.models import load_hf_model, load_teacher
    from rlad_megatron.models.hf_export import iter_hf_tensors

    dp_rank = ps.get_data_parallel_rank()
    batch = _rank_batch(dp_rank)
    out: dict = {"dp_rank": dp_rank, "ep": ps.get_expert_model_parallel_world_size()}

    chunks, arch = load_teacher(teacher_dir)
    out["teacher_local_experts"] = len(chunks[0].decoder.layers[0].mlp.local_expert_indices)
    teacher = MegatronPolicy(chunks, arch.vocab_size)
    budget = MicroBatching(max_tokens=BUDGET)
    out["budget_shapes"] = [tuple(m.tokens.shape) for m in teacher.micro_batches(batch, budget)]
    out["teacher_fixed"] = teacher.token_logprobs(batch, COUNTS[dp_rank])  # one micro-batch, the rank's width
    out["teacher_budget"] = teacher.token_logprobs(batch, budget)
    del teacher, chunks

    chunks, arch = load_hf_model(student_dir, trainable=True)
    out["student_local_experts"] = len(chunks[0].decoder.layers[0].mlp.local_expert_indices)
    wrapped, optimizer = build_student(chunks, OptimConfig(lr=0.5, adam_eps=1.0, clip_grad=0.0))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    total = torch.tensor(float(batch.loss_mask.sum()))
    dist.all_reduce(total, group=ps.get_data_parallel_group())
    shares: list[float] = []

    def loss_fn(logprobs, entropy, mb):
        loss = -(logprobs * mb.loss_mask * mb.advantages.unsqueeze(1)).sum() / total
        shares.append(float(loss))
        return loss, {}

    losses, norms, lb = [], [], []
    for _ in range(2):
        shares.clear()
        step = policy.train_step(batch, loss_fn, budget)
        assert step.applied
        loss = torch.tensor(sum(shares), dtype=torch.float64)
        dist.all_reduce(loss, group=ps.get_data_parallel_group())
        losses.append(float(loss))
        norms.append(step.grad_norm)
        lb.append(step.moe["moe/load_balancing_loss"])
    weights = dict(iter_hf_tensors(chunks, arch))  # collective over the EP group: every rank iterates
    out.update(losses=losses, grad_norms=norms, load_balancing=lb, weights=weights if dist.get_rank() == 0 else None)
    return out


@pytest.fixture(scope="module")
def ep_runs(tmp_path_factory) -> dict[int, list[dict]]:
    root = tmp_path_factory.mktemp("ep_learner")
    teacher = make_tiny_hf_model(root / "teacher", family="qwen2_moe", num_layers=2, seed=61)
    student = make_tiny_hf_model(root / "student", family="qwen3_moe", num_layers=2, seed=62,
                                 moe={"router_aux_loss_coef": 0.1})
    runs = {ep: run_distributed(_rank_main, 2, ep=ep, args=(str(teacher), str(student)), timeout=500)
            for ep in (1, 2)}
    runs["student_dir"] = student
    return runs


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_teacher_logprobs_at_ep2_equal_ep1(ep_runs):
    ep1, ep2 = ep_runs[1], ep_runs[2]
    assert [r["teacher_local_experts"] for r in ep2] == [2, 2] and ep1[0]["teacher_local_experts"] == 4
    # the two ranks' budget micro-batches really differ (count and shape), so EP=2 had to make them common
    assert ep1[0]["budget_shapes"] != ep1[1]["budget_shapes"]
    assert ep2[0]["budget_shapes"] == ep2[1]["budget_shapes"]
    for rank in range(2):
        for key in ("teacher_fixed", "teacher_budget"):
            ref, got = ep1[rank][key], ep2[rank][key]
            assert got.shape == ref.shape
            err = _max_diff(got, ref)
            print(f"EP2 vs EP1 {key} rank {rank}: max |dlogprob| {err:.3g}")
            assert err < 1e-5, (key, rank, err)


def test_student_steps_at_ep2_equal_ep1(ep_runs):
    ep1, ep2 = ep_runs[1][0], ep_runs[2][0]
    assert ep2["student_local_experts"] == 2
    assert ep1["load_balancing"][0] > 0.5  # switch loss: 1.0 when balanced
    for key in ("losses", "grad_norms", "load_balancing"):
        print(f"EP2 vs EP1 {key}: {ep2[key]} vs {ep1[key]}")
        assert ep2[key] == pytest.approx(ep1[key], rel=1e-5, abs=1e-7), key
    worst = max(_max_diff(ep2["weights"][k], t) for k, t in ep1["weights"].items())
    print(f"EP2 vs EP1 weights after two steps: max |dw| {worst:.3g}")
    assert sorted(ep2["weights"]) == sorted(ep1["weights"])
    assert worst < 1e-5
    # the steps moved every kind of weight, experts and router included (untouched models would prove nothing)
    from safetensors.torch import load_file

    initial = load_file(Path(ep_runs["student_dir"]) / "model.safetensors")
    for key in ("model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.3.down_proj.weight",
                "model.layers.1.self_attn.q_proj.weight"):
        assert _max_diff(ep1["weights"][key], initial[key]) > 1e-4, key
