"""The reward guard: exceptions and timeouts give reward 0, are counted, and never stop the caller."""
from __future__ import annotations

import threading
import time
from typing import Any, Mapping

import pytest

from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.rewards.guard import RewardGuard


def picky_reward(completion: str, record: Mapping[str, Any]) -> RewardResult:
    """Module-level (picklable) reward: 'boom' raises, 'hang' loops forever, else correct iff equal to answer."""
    if completion == "boom":
        raise ZeroDivisionError("adversarial")
    if completion == "hang":
        while True:  # a pure-Python hang (signal-free timeouts must still stop it)
            pass
    if completion == "notaresult":
        return 1.0  # type: ignore[return-value]
    ok = completion == record["answer"]
    return RewardResult(float(ok), ok, True)


picky_reward.may_hang = True  # type: ignore[attr-defined]
REC = {"id": "r", "answer": "7"}


def test_inline_catches_exceptions_and_bad_return_types() -> None:
    g = RewardGuard(picky_reward, backend="inline")
    assert g.score("7", REC).correct
    r = g.score("boom", REC)
    assert (r.score, r.correct, r.format_ok) == (0.0, False, False) and "ZeroDivisionError" in r.error
    assert "expected RewardResult" in g.score("notaresult", REC).error
    assert (g.stats.calls, g.stats.errors, g.stats.timeouts) == (3, 2, 0)
    assert g.stats.as_metrics()["reward/errors"] == 2.0


def test_auto_backend_follows_may_hang() -> None:
    from rlad_megatron.tasks.arithmetic.task import ArithmeticTask

    assert RewardGuard(picky_reward).backend == "process"
    assert RewardGuard(ArithmeticTask().reward).backend == "inline"
    with pytest.raises(ValueError, match="backend"):
        RewardGuard(picky_reward, backend="signal")


def test_process_backend_times_out_raises_and_recovers_from_a_worker_thread() -> None:
    results: dict[str, Any] = {}

    def run() -> None:  # not the main thread: signal.alarm would not work here
        with RewardGuard(picky_reward, timeout_s=0.5, backend="process") as g:
            results["ok"] = g.score("7", REC)
            t0 = time.perf_counter()
            results["hang"] = g.score("hang", REC)
            results["hang_s"] = time.perf_counter() - t0
            results["boom"] = g.score("boom", REC)
            results["after"] = g.score_many([("7", REC), ("8", REC)])
            results["stats"] = g.stats

    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=120)
    assert not th.is_alive()
    assert results["ok"].correct
    assert results["hang"].error.startswith("timeout") and results["hang"].score == 0.0
    assert results["hang_s"] < 5.0
    assert "ZeroDivisionError" in results["boom"].error
    assert [r.correct for r in results["after"]] == [True, False]
    s = results["stats"]
    assert (s.calls, s.errors, s.timeouts) == (5, 1, 1)


def nan_reward(completion: str, record: Mapping[str, Any]) -> RewardResult:
    return RewardResult(float(completion), True, True)


nan_reward.may_hang = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["inline", "process"])
def test_non_finite_rewards_are_errors_with_reward_zero(backend: str) -> None:
    with RewardGuard(nan_reward, backend=backend, timeout_s=30) as g:
        got = g.score_many([("nan", REC), ("inf", REC), ("-inf", REC), ("0.5", REC)])
    assert [r.score for r in got] == [0.0, 0.0, 0.0, 0.5]
    assert [r.correct for r in got] == [False, False, False, True]
    assert all("non-finite reward" in r.error for r in got[:3])
    assert g.stats.errors == 3


def test_hostile_samples_are_scored_concurrently() -> None:
    """Three hanging samples among healthy ones cost about one timeout, not three."""
    timeout = 5.0
    items = [("7", REC), ("hang", REC), ("8", REC), ("hang", REC), ("boom", REC), ("hang", REC), ("7", REC)]
    with RewardGuard(picky_reward, timeout_s=timeout, backend="process", max_workers=6) as g:
        assert g.start_workers() == 6  # the workers' first start-up is not part of the measurement
        started = time.perf_counter()
        got = g.score_many(items)
        seconds = time.perf_counter() - started
    assert [r.correct for r in got] == [True, False, False, False, False, False, True]
    assert [r.error.startswith("timeout") for r in got] == [False, True, False, True, False, True, False]
    assert "ZeroDivisionError" in got[4].error
    assert (g.stats.timeouts, g.stats.errors) == (3, 1)
    assert seconds < 2 * timeout, f"{seconds:.1f} s for 3 hanging samples with a {timeout} s timeout"


def test_reward_timeout_is_a_config_value() -> None:
    from rlad_megatron.config import ConfigError, load_run_config

    base = ["model.student=/s", "data.train_files=a", "loss.algorithm=grpo"]
    assert load_run_config(None, base + ["rollout.reward_timeout_s=2.5"]).rollout.reward_timeout_s == 2.5
    with pytest.raises(ConfigError, match="rollout.reward_timeout_s"):
        load_run_config(None, base + ["rollout.reward_timeout_s=0"])
