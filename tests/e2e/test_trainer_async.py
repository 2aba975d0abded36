"""Asynchronous rollouts with the real trainer (tiny models, vLLM engine in its own process, Megatron learner and
teacher, kdrl: its distillation term moves the weights even while a random student earns no reward):

- ``rollout.mode=async`` with ``max_staleness=0`` reproduces the synchronous run's metrics exactly;
- with ``max_staleness=1`` batch t >= 1 comes from the weights of step t - 1 (versions and staleness logged per
  step, nothing dropped) and trains against the engine's log-probs;
- a resume from the mid-run checkpoint of that run (which holds the batch generated ahead) logs exactly the
  metrics of the uninterrupted run.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config
from rlad_megatron.trainer.observability.metrics_file import is_clock_metric

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 3



def _computed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not is_clock_metric(k)} for r in rows]


def _run(paths: dict, out: Path, *, resume: bool = False, **rollout) -> list[dict]:
    # engine_cpus=1 (every run, so all learners have the same threads): the engine process on one core, the learner
    # on the other; unpinned, vLLM's OpenMP threads and the learner's contend for both cores while they overlap
    config = run_config(paths, out / "out", rollout={"placement": "disaggregated", "engine_cpus": 1, **rollout},
                        loss={"algorithm": "kdrl", "kd_beta": 0.5, "kd_beta_final": None},
                        trainer={"steps": STEPS, "save_every": 2, "export_hf": False, "skip_uniform_groups": False})
    result = launch(config, 1, workdir=out / "w", resume=resume)
    assert result.returncode == 0, result.stdout[-4000:]
    return read_metrics(out / "out")


def test_async_rollouts_staleness_zero_equals_sync_and_one_step_ahead_resumes_exactly(tmp_path: Path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")

    sync = _run(paths, tmp_path / "sync", mode="sync")
    async0 = _run(paths, tmp_path / "async0", mode="async", max_staleness=0)
    assert _computed(async0) == _computed(sync)
    assert [r["rollout/weight_version"] for r in sync] == [1.0, 2.0, 3.0]
    assert [r["rollout/staleness"] for r in sync] == [0.0, 0.0, 0.0]
    assert all(r["optim/grad_norm"] > 0 for r in sync)  # the weights move: versions differ in what they sample

    ahead = _run(paths, tmp_path / "async1", mode="async", max_staleness=1)
    assert [r["rollout/weight_version"] for r in ahead] == [1.0, 1.0, 2.0]
    assert [r["rollout/staleness"] for r in ahead] == [0.0, 1.0, 1.0]
    assert [r["rollout/stale_dropped"] for r in ahead] == [0.0] * STEPS
    assert [r["sync/version"] for r in ahead] == [2.0, 3.0, 4.0]
    # step 1 is the synchronous one (same prompts, seeds and weights)
    assert _computed(ahead[:1]) == _computed(sync[:1])
    # later steps train on one-step-old samples, against the log-probs of the policy that sampled them: the engine's
    # (the learner's own would make the old-policy KL exactly 0, as in the synchronous run)
    assert [r["loss/kl/old_k3"] for r in sync] == [0.0] * STEPS
    assert ahead[0]["loss/kl/old_k3"] == 0.0 and all(r["loss/kl/old_k3"] > 1e-9 for r in ahead[1:])
    assert ahead[1]["response/length_mean"] != sync[1]["response/length_mean"] \
        or ahead[1]["loss/loss"] != sync[1]["loss/loss"]
    assert all(math.isfinite(r["loss/loss"]) for r in ahead)

    # resume from the step-2 checkpoint (it holds batch 3, generated during step 2) in a fresh output folder
    resumed_out = tmp_path / "resumed" / "out" / "checkpoints"
    resumed_out.mkdir(parents=True)
    shutil.copytree(tmp_path / "async1" / "out" / "checkpoints" / "step_000002", resumed_out / "step_000002")
    (resumed_out / "latest").write_text("step_000002")
    resumed = _run(paths, tmp_path / "resumed", resume=True, mode="async", max_staleness=1)
    assert [r["step"] for r in resumed] == [3]
    assert _computed(resumed) == _computed(ahead[2:])
