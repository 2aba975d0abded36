"""Fault injection on a real 2-rank run (TP=2, Megatron learner, vLLM engine, tiny models): every rank is SIGKILLed
in the middle of a checkpoint write, in generation and in weight sync, each time followed by --resume; the test
checks that every killed process (ranks, megatron's checkpoint Manager, torchrun) is gone, and that the final
per-step metrics equal those of an uninterrupted run.

Why not also at the teacher and training points (two launches, ~50 s of the suite): between the step-2 save and
the step-4 one, a kill at generation, teacher scoring or training leaves the same files (the step-2 checkpoint,
LATEST, metrics up to step 2: a step logs only after its sync) and the same processes (torchrun and the two ranks;
the engine and the Megatron teacher live in the ranks), so the resume that follows is the same. Generation is the
first of them (a kill before any work of the step); sync is kept because it is the one point with weights in
flight between learner and engine.

The uninterrupted run is the chain's first run: it trains steps 1-4 without a fault and is killed only inside the
step-4 save, after step 4's metrics are logged (the trainer logs a step before saving it), so its metrics are
those of an uninterrupted run and the chain needs no separate reference launch (one start-up less, ~30 s).

torch 2.13 starts each rank in its own session, so killing torchrun's process group would leave the ranks running:
the processes are collected from torchrun's process tree before the kill."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config
from rlad_megatron.trainer.faults import ENV_DIR, ENV_POINT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 4
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "optim/grad_norm")
# (point, step): each run of the chain is killed there and the next one resumes from the step-2 checkpoint. The
# first run starts fresh and is killed mid-save of step 4, after its 4 steps ran uninterrupted (the reference).
KILLS = [("checkpoint", 4), ("generation", 3), ("sync", 3)]


def _config(paths: dict, out: Path) -> dict:
    config = run_config(paths, out, loss={"algorithm": "kdrl", "kd_beta": 0.5, "kd_beta_final": None},
                        trainer={"steps": STEPS, "save_every": 2, "skip_uniform_groups": False, "export_hf": False})
    config["parallel"] = {"tensor_parallel": 2}
    return config


def _kill_at(config: dict, workdir: Path, point: str, step: int, resume: bool) -> list[str]:
    """Launch, wait until both ranks are held at ``point`` of ``step``, SIGKILL every process of the run (checked
    dead); return their command lines."""
    faults = workdir / f"fault_{point}"
    faults.mkdir(parents=True)
    proc = launch(config, 2, workdir=workdir, resume=resume, wait=False,
                  extra_env={ENV_POINT: f"{point}:{step}", ENV_DIR: str(faults)})
    deadline = time.monotonic() + 400
    while len(list(faults.glob("paused_rank*.pid"))) < 2:
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before reaching {point}:{step}; see {workdir}")
        if time.monotonic() > deadline:
            pytest.fail(f"{point}:{step} not reached in time")
        time.sleep(0.2)
    ranks = {int(p.read_text()) for p in faults.glob("paused_rank*.pid")}
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert ranks <= {p.pid for p in tree}
    cmdlines = []
    for p in tree:
        try:
            cmdlines.append(" ".join(p.cmdline()))
        except psutil.NoSuchProcess:
            pass
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(tree, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes survived the kill at {point}: {[p.pid for p in alive]}"
    return cmdlines


def test_sigkill_every_rank_at_each_point_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")
    out = tmp_path / "b" / "out"
    config = _config(paths, out)
    checkpoints = out / "checkpoints"
    reference: list[dict] = []
    for i, (point, step) in enumerate(KILLS):
        killed = _kill_at(config, tmp_path / "b", point, step, resume=i > 0)
        if point == "checkpoint":  # after the step-2 save and inside the step-4 one: megatron's Manager was there
            assert i == 0, "the reference metrics come from the chain's first (fresh) run"
            assert any("multiprocessing" in c for c in killed), killed
            # killed mid-save: the step-4 files lie in the temporary folder, never loaded
            assert (checkpoints / ".tmp_step_000004" / "megatron").is_dir()
            assert not (checkpoints / "step_000004").exists()
            reference = read_metrics(out)  # logged before the save: 4 uninterrupted steps
            assert [m["step"] for m in reference] == list(range(1, STEPS + 1))
        assert (checkpoints / "latest").read_text() == "step_000002", point

    resumed = launch(config, 2, workdir=tmp_path / "b", resume=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert "resumed from" in resumed.stdout and "step_000002 at step 2" in resumed.stdout
    got = read_metrics(out)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))
    for ref, val in zip(reference, got):
        for key in KEYS:
            assert val[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"step {ref['step']} {key}"
    assert reference[-1]["optim/grad_norm"] != pytest.approx(reference[0]["optim/grad_norm"], rel=1e-3)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_000002", "step_000004"]
