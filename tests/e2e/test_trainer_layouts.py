"""The real trainer (vLLM engine + Megatron learner + teacher + weight sync) on warm-started tiny models at TP=1,
TP=2, PP=2, DP=2 with packed token-budget micro-batches, CP=2, with engines sharded like the learner
(rollout.executor=external_launcher) at TP=2 and PP=2, and at TP=1 with asynchronous rollouts at staleness 1
(tests/e2e/layout_runs.py):

- the first two steps agree with TP=1's in every synchronous layout (same samples through layout-independent seeds,
  same losses, teacher KL, gradient norms and number of updates, so the same weights after step 1's four updates);
  for the sharded engines this also says that their shards sample what one whole engine samples;
- every sync serves the learner's weights, in every layout and at every step (the probe after each sync, on every
  engine shard);
- the evaluation after the last step runs through the sharded engines too;
- RLAD raises the reward of a warm-started student over 24 steps, synchronously (tp1) and with the engine one
  weight version behind the learner (async: every batch after the first sampled by the previous step's weights).

Why the reward curve is checked on tp1 and async only: a layout changes how the learner's arithmetic is split, not
what it computes. The first-steps test ties every other layout to tp1 at 1e-4 through a full step (rollout, teacher,
loss, gradient, four optimizer updates, sync) and the next rollout on the updated weights, and the probe after every
sync shows that their engines serve what their learners trained; a longer run of a layout would repeat that step
with other numbers (tests/distributed also check the layouts' forward, backward and update against one rank).
"""
from __future__ import annotations

import statistics

import pytest

from layout_runs import LAYOUTS, STEPS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Compared at step 1 (same weights, same samples) and step 2 (after updates computed in each layout).
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "loss/clip/high_frac",
        "optim/grad_norm", "optim/applied_updates")
#: The layouts that train like tp1 for 2 steps (not the asynchronous run; vllm_teacher is test_trainer_teachers').
SYNCHRONOUS = ["tp2", "pp2", "dp2_packed", "cp2", "el_tp2", "el_pp2"]


@pytest.fixture(scope="module")
def runs(layout_runs) -> dict[str, list[dict]]:
    """Per layout, its per-step metrics (the runs are the session's: tests/e2e/conftest.py, layout_runs.py)."""
    return {name: layout_runs[name].metrics for name in LAYOUTS}


@pytest.mark.parametrize("layout", SYNCHRONOUS)
def test_first_steps_match_single_rank(layout: str, runs) -> None:
    reference, got = runs["tp1"], runs[layout]
    for step in range(2):
        for key in KEYS:
            ref, val = reference[step][key], got[step][key]
            assert val == pytest.approx(ref, rel=1e-4, abs=1e-5), f"{layout} step {step + 1} {key}: {val} vs {ref}"
    assert reference[0]["optim/grad_norm"] > 0 and reference[0]["optim/applied_updates"] == 4


@pytest.mark.parametrize("layout", ["tp1", "async"])
def test_rlad_raises_the_reward(layout: str, runs) -> None:
    rewards = [m["reward/mean"] for m in runs[layout]]
    assert len(rewards) == STEPS
    first, last = statistics.mean(rewards[:8]), statistics.mean(rewards[-8:])
    assert last > first + 0.04, f"{layout}: reward {first:.3f} over the first 8 steps, {last:.3f} over the last 8"


def test_async_run_trains_one_step_off_policy(runs) -> None:
    """The async run of test_rlad_raises_the_reward really was off-policy: from step 2 on, each batch was sampled by
    the weights of the step before (how those batches train is tests/e2e/test_trainer_async.py's subject)."""
    staleness = [m["rollout/staleness"] for m in runs["async"]]
    assert staleness == [0.0] + [1.0] * (STEPS - 1), staleness


def test_engine_serves_learner_weights_in_every_layout(runs) -> None:
    for name, metrics in runs.items():
        assert [m["step"] for m in metrics] == list(range(1, LAYOUTS[name].steps + 1)), name
        for m in metrics:
            assert m["sync/logprob_max_abs"] < 1e-4, f"{name} step {m['step']}: engine/learner mismatch"


@pytest.mark.parametrize("layout", ["el_tp2", "el_pp2"])
def test_evaluation_through_the_sharded_engine(layout: str, runs) -> None:
    evaluated = [m for m in runs[layout] if "eval/accuracy" in m]
    assert [m["step"] for m in evaluated] == [LAYOUTS[layout].steps]  # after the last step
    assert 0 <= evaluated[0]["eval/accuracy"] <= 1 and evaluated[0]["eval/pass@2"] >= evaluated[0]["eval/pass@1"]


def test_periodic_evaluation_is_logged(runs) -> None:
    evaluated = [m for m in runs["tp1"] if "eval/accuracy" in m]
    assert [m["step"] for m in evaluated] == [12, STEPS]
    assert all(0 < m["eval/accuracy"] <= 1 and m["eval/pass@2"] >= m["eval/pass@1"] for m in evaluated)
