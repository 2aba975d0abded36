"""A disaggregated vLLM engine process SIGKILLed in the middle of a run: the learner stops with a clear error naming
the engine (no hang), no process of the run is left, and the last checkpoint is intact and loadable."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, run_config
from rlad_megatron import checkpoint_files as ckf
from rlad_megatron.trainer.faults import ENV_DIR, ENV_POINT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_engine_killed_mid_run_is_a_clear_error_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")
    out = tmp_path / "out"
    config = run_config(paths, out, rollout={"placement": "disaggregated"}, loss={"algorithm": "grpo"},
                        trainer={"steps": 3, "save_every": 1, "export_hf": False})
    faults = tmp_path / "faults"
    faults.mkdir()
    proc = launch(config, 1, workdir=tmp_path / "w", wait=False, extra_env={ENV_POINT: "generation:2",
                                                                             ENV_DIR: str(faults)})
    deadline = time.monotonic() + 400
    while not (faults / "paused_rank0.pid").exists():
        assert proc.poll() is None, (tmp_path / "w" / "train.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "generation of step 2 not reached"
        time.sleep(0.2)
    rank = psutil.Process(int((faults / "paused_rank0.pid").read_text()))
    run_tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    # The rank's spawned children: the engine (started first), megatron's checkpoint Manager (at the first save).
    spawned = sorted((c for c in rank.children() if "spawn_main" in " ".join(c.cmdline())),
                     key=lambda c: c.create_time())
    engine = spawned[0]
    engine.send_signal(signal.SIGKILL)
    _wait_dead(engine)  # a zombie until the paused rank reaps it
    (faults / "release").write_text("")  # step 2 now asks the dead engine for rollouts
    code = proc.wait(timeout=300)
    log = (tmp_path / "w" / "train.log").read_text(errors="replace")
    assert code != 0
    assert "the vLLM engine process died" in log
    _, alive = psutil.wait_procs(run_tree, timeout=60)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()[:3]) for p in alive]
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000001"
    ckf.verify_checkpoint(checkpoints / "step_000001")
    assert ckf.read_trainer_state(checkpoints / "step_000001")["step"] == 1


def _wait_dead(p: psutil.Process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {p.pid} still alive after SIGKILL")
