"""The real trainer (vLLM engine + Megatron learner + teacher + weight sync) at TP=1, TP=2, PP=2, DP=2 and CP=2:
the first steps agree across layouts (same samples through layout-independent seeds, same losses and gradient
norms), every sync serves the learner's weights, and RLAD raises the reward of a warm-started student."""
from __future__ import annotations

import statistics

import pytest

from layout_runs import LAYOUTS, STEPS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Compared at step 1 (same weights, same samples) and step 2 (after updates computed in each layout).
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "loss/clip/high_frac",
        "optim/grad_norm")


@pytest.fixture(scope="module")
def runs(layout_runs) -> dict[str, list[dict]]:
    """Per layout, its per-step metrics (the runs are the session's: tests/e2e/conftest.py, layout_runs.py)."""
    return {name: layout_runs[name].metrics for name in LAYOUTS}


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2", "cp2"])
def test_first_steps_match_single_rank(layout: str, runs) -> None:
    reference, got = runs["tp1"], runs[layout]
    for step in range(2):
        for key in KEYS:
            ref, val = reference[step][key], got[step][key]
            assert val == pytest.approx(ref, rel=1e-4, abs=1e-5), f"{layout} step {step + 1} {key}: {val} vs {ref}"
    assert reference[0]["optim/grad_norm"] > 0 and reference[0]["optim/applied_updates"] == 4


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2"])
def test_rlad_raises_the_reward(layout: str, runs) -> None:
    rewards = [m["reward/mean"] for m in runs[layout]]
    assert len(rewards) == STEPS
    first, last = statistics.mean(rewards[:8]), statistics.mean(rewards[-8:])
    assert last > first + 0.04, f"{layout}: reward {first:.3f} over the first 8 steps, {last:.3f} over the last 8"


def test_engine_serves_learner_weights_in_every_layout(runs) -> None:
    for name, metrics in runs.items():
        for m in metrics:
            assert m["sync/logprob_max_abs"] < 1e-4, f"{name} step {m['step']}: engine/learner mismatch"


def test_periodic_evaluation_is_logged(runs) -> None:
    evaluated = [m for m in runs["tp1"] if "eval/accuracy" in m]
    assert [m["step"] for m in evaluated] == [12, STEPS]
    assert all(0 < m["eval/accuracy"] <= 1 and m["eval/pass@2"] >= m["eval/pass@1"] for m in evaluated)
