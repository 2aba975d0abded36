"""A run killed with SIGKILL mid-training resumes with --resume and continues as if it had never stopped: its
per-step metrics equal those of an uninterrupted run (weights, Adam state, data position and sampling seeds all
restored)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 4
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "optim/grad_norm")


def _config(paths: dict, out: Path) -> dict:
    return run_config(paths, out, loss={"algorithm": "kdrl", "kd_beta": 0.5, "kd_beta_final": None},
                      trainer={"steps": STEPS, "save_every": 2, "skip_uniform_groups": False, "export_hf": False})


def _wait_for(predicate, timeout: float, proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before the kill point")
        time.sleep(0.2)
    pytest.fail("kill point not reached in time")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")
    # The uninterrupted reference, at TP=2 like the interrupted run.
    config_a = _config(paths, tmp_path / "a" / "out")
    config_a["parallel"] = {"tensor_parallel": 2}
    straight = launch(config_a, 2, workdir=tmp_path / "a", timeout=400)
    assert straight.returncode == 0, straight.stdout[-5000:]
    reference = read_metrics(tmp_path / "a" / "out")

    config_b = _config(paths, tmp_path / "b" / "out")
    config_b["parallel"] = {"tensor_parallel": 2}
    proc = launch(config_b, 2, workdir=tmp_path / "b", wait=False)
    out = tmp_path / "b" / "out"
    # Kill after the step-2 checkpoint, while step 3 is under way (its metrics may or may not be logged yet).
    _wait_for(lambda: (out / "checkpoints" / "latest").exists(), 400, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(read_metrics(out)) < STEPS, "the run finished before it could be killed"

    resumed = launch(config_b, 2, workdir=tmp_path / "b", resume=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert "resumed from" in resumed.stdout
    got = read_metrics(out)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    for ref, val in zip(reference, got):
        for key in KEYS:
            assert val[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"step {ref['step']} {key}"
    assert reference[-1]["optim/grad_norm"] != pytest.approx(reference[0]["optim/grad_norm"], rel=1e-3)
