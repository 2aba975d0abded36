"""The three-pool plan (memory_plan/pools.py): each pool's step time from per-token costs under the schedule the
trainer runs, the proposals of a GPU split, costs measured back from a run's metrics, the FLOP estimate's active
parameters, each pool's GPU memory, and the MoE recipe with a teacher pool of its own (--plan, --show)."""
from __future__ import annotations

import dataclasses

import pytest

from recipes import get_recipe
from recipes.cli import main
from rlad_megatron.config import RunConfig
from rlad_megatron.memory_plan import GIB
from rlad_megatron.memory_plan.pools import (
    PoolCosts, PoolLayout, StepWork, _active_params, candidate_layouts, measured_costs, predict, propose,
)
from recipes.paper import QWEN3_SHAPES

POOL_RECIPE = "math_qwen3_1p7b_from_30b_a3b_pool"


def _config(*, rollout: str = "disaggregated", mode: str = "async", teacher: str = "separate",
            source: str = "megatron", ranks: int = 1, prompts: int = 8) -> RunConfig:
    c = RunConfig()
    c.model.teacher = "/t"
    c.data.prompts_per_step = prompts
    c.rollout.placement, c.rollout.mode = rollout, mode
    c.teacher.placement, c.teacher.source = teacher, source
    if teacher == "separate" and source == "megatron":
        c.teacher.ranks = ranks
    return c


#: One GPU-second of work per step for each pool (1 token each at 1 s/token).
UNIT = StepWork(generated_tokens=1.0, sequence_tokens=1.0)


def test_async_step_with_a_teacher_pool_follows_the_one_ahead_chain():
    costs = PoolCosts(generation=0.6, teacher=1.0, learner=0.9)
    b = predict(_config(), PoolLayout(1, 1, 1), costs, UNIT)
    # generation (0.6) and scoring (1.0) of batch t+1 must both finish within two steps of the learner (0.9 each)
    assert b.step_s == pytest.approx((0.6 + 1.0 + 0.9) / 2)
    assert b.idle == pytest.approx({"learner": 1 - 0.9 / 1.25, "rollout": 1 - 0.6 / 1.25, "teacher": 1 - 1 / 1.25})
    # a slow learner bounds the step by itself; two teacher GPUs halve the teacher's time
    assert predict(_config(), PoolLayout(1, 1, 1), PoolCosts(0.1, 0.1, 2.0), UNIT).step_s == pytest.approx(2.0)
    assert predict(_config(), PoolLayout(1, 1, 2), costs, UNIT).busy_s["teacher"] == pytest.approx(0.5)


def test_colocated_pools_add_to_the_learner_and_sync_overlaps_the_forward_passes():
    costs = PoolCosts(generation=0.6, teacher=1.0, learner=0.9, learner_forward_share=0.5)
    colocated = predict(_config(rollout="colocated", mode="sync", teacher="colocated"), PoolLayout(1), costs, UNIT)
    assert colocated.step_s == pytest.approx(0.6 + 1.0 + 0.9) and colocated.idle["learner"] == 0
    assert not colocated.apart["rollout"] and not colocated.apart["teacher"]
    sync_pool = predict(_config(rollout="colocated", mode="sync"), PoolLayout(1, 0, 1), costs, UNIT)
    # the teacher pool scores while the learner runs its forward-only passes (0.45 s of its 0.9 s)
    assert sync_pool.step_s == pytest.approx(0.6 + 0.9 + (1.0 - 0.45))
    async_no_pool = predict(_config(teacher="colocated"), PoolLayout(1, 1), costs, UNIT)
    assert async_no_pool.step_s == pytest.approx(0.9 + 1.0)  # teacher on the learner's critical path
    grpo = dataclasses.replace(_config(teacher="colocated"), loss=dataclasses.replace(RunConfig().loss,
                                                                                     algorithm="grpo"))
    assert "teacher" not in predict(grpo, PoolLayout(1, 1), costs, UNIT).busy_s


def test_proposals_respect_replicas_prompts_and_expert_parallelism_and_balance_the_pools():
    c = _config(prompts=8, ranks=4)
    c.teacher.expert_parallel = 4
    layouts = list(candidate_layouts(c, 12))
    assert layouts and all(lay.teacher % 4 == 0 and 8 % lay.rollout == 0 and 8 % lay.learner == 0
                           for lay in layouts)
    # each pool one GPU-second of work per step on one GPU: the split that balances wins
    best = propose(c, 12, PoolCosts(generation=4.0, teacher=4.0, learner=4.0), UNIT)
    assert best[0].layout == PoolLayout(4, 4, 4) and best[0].step_s == pytest.approx(1.5)
    assert [b.step_s for b in best] == sorted(b.step_s for b in best)
    vllm = _config(source="vllm", prompts=8)
    layouts = list(candidate_layouts(vllm, 9))  # one teacher engine per learner replica, every GPU used
    assert layouts and all(lay.teacher == lay.learner and lay.total == 9 for lay in layouts), layouts
    vllm.parallel.tensor_parallel = 2
    assert PoolLayout(4, 4, 2) in list(candidate_layouts(vllm, 10))  # DP=2 replicas of TP=2, 2 teacher engines


def test_costs_measured_from_a_run_give_back_its_busy_times():
    rows = [{"step": s, "rollout/generated_tokens": 512.0, "rollout/sequence_tokens": 1024.0,
             "timeline/learner_busy": 0.9, "timeline/rollout_busy": 0.6, "timeline/teacher_busy": 1.0,
             "time/old_logprobs": 0.0} for s in (1, 2, 3)]
    costs, work = measured_costs(rows, PoolLayout(1, 1, 1))
    assert (costs.generation, costs.teacher, costs.learner) == pytest.approx((0.6 / 512, 1.0 / 1024, 0.9 / 1024))
    b = predict(_config(), PoolLayout(1, 1, 1), costs, work)
    assert b.busy_s == pytest.approx({"learner": 0.9, "rollout": 0.6, "teacher": 1.0})
    # a colocated engine's time is the learner's, not its own: taken out of the learner's per-token cost
    colocated = [dict(r, **{"timeline/learner_busy": 1.5}) for r in rows]
    costs, _ = measured_costs(colocated, PoolLayout(1, 0, 1))
    assert costs.learner == pytest.approx(0.9 / 1024)


def test_active_parameters_of_the_moe_teacher():
    # Qwen3-30B-A3B: 30.5B parameters, ~3.3B active per token (the model card's "A3B"), embedding lookups excluded
    assert _active_params(QWEN3_SHAPES["Qwen3-30B-A3B"]) == pytest.approx(3.0e9, rel=0.1)
    assert _active_params(QWEN3_SHAPES["Qwen3-8B"]) == pytest.approx(8.2e9 - 0.62e9, rel=0.05)


def test_moe_recipe_with_a_teacher_pool_plans_each_pool_and_launches(capsys):
    recipe = get_recipe(POOL_RECIPE)
    placement = recipe.validate()
    assert (placement.world_size, placement.learner_gpus, placement.teacher_gpus, placement.dp) == (16, 8, 8, 8)
    t = recipe.config.teacher
    assert (t.placement, t.ranks, t.expert_parallel, recipe.config.parallel.expert_parallel) == ("separate", 8, 8, 1)
    plans = recipe.pool_plans(placement)
    experts = 48 * 128 * 3 * 2048 * 768
    assert plans["teacher"].term("teacher weights").bytes == 2 * (30_532_122_624 - experts + experts // 8)
    colocated = get_recipe("math_qwen3_1p7b_from_30b_a3b")  # the teacher's 57 GiB leave the learner's GPUs
    assert colocated.memory_plan().peak_gib - plans["learner"].peak_gib > 50
    assert all(p.fits for p in plans.values()) and plans["teacher"].peak_gib < 40
    assert main([POOL_RECIPE, "--plan"]) == 0
    out = capsys.readouterr().out
    assert "teacher pool: memory plan per GPU" in out and "throughput balance (estimated (H200)" in out
    assert "teacher 8 GPUs busy" in out and "idle" in out
    assert main([POOL_RECIPE, "--show"]) == 0
    out = capsys.readouterr().out
    assert "on 8 GPUs of its own (the job's last 8 ranks): TP=1 x PP=1, EP=8" in out
    for arg in ("teacher.placement=separate", "teacher.ranks=8", "teacher.expert_parallel=8"):
        assert f" {arg}" in out, arg
    assert "parallel.expert_parallel" not in out  # the dense student has no experts to split
    assert recipe.teacher_shape is not None and plans["teacher"].gpu_gib == pytest.approx(139.8)
    assert plans["teacher"].resident_bytes > 9 * GIB
