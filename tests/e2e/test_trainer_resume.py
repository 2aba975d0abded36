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
the processes are collected from torchrun's process tree before the kill.

While the first run is held (inside its step-4 save, every process alive), two more things are checked on it:
- every socket its process tree (launcher, torchrun's agent, both ranks, the vLLM engines, megatron's checkpoint
  Manager) listens on is bound to the loopback interface, although GLOO_SOCKET_IFNAME names the network interface
  (gloo's own choice on a machine whose hostname resolves to its network address);
- a second `train` on the same output folder is refused in seconds, naming the holder (rank 0's pid, the host),
  exit code 2, before it loads anything, and writes nothing there."""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
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


def _network_interface() -> str | None:
    """A network interface of this machine other than loopback (None: there is none)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback for a in addresses):
            return name
    return None


def _listening(tree: list[psutil.Process]) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP socket listening and every UDP socket bound in ``tree``."""
    found = []
    for p in tree:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                    found.append((" ".join(p.cmdline())[:60], c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            pass
    return found


def _check_held_run(config: dict, workdir: Path, faults: Path, tree: list[psutil.Process]) -> None:
    """On the first run, held in its step-4 save: loopback-only sockets, and a second run is refused."""
    sockets = _listening(tree)
    assert sockets, "the run listens on nothing: the check would prove nothing"
    assert all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for _, ip, _ in sockets), sockets
    out = Path(config["trainer"]["output_dir"])
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    rank0 = int((faults / "paused_rank0.pid").read_text())
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "train", "--config",
                             str(workdir / "config.yaml"), "--resume"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert time.monotonic() - started < 60  # refused before any model loads
    assert f"rlad-megatron train: trainer.output_dir={out} is in use by another run: pid {rank0} on host " \
           f"{socket.gethostname()}, since " in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file()) == before


def _kill_at(config: dict, workdir: Path, point: str, step: int, resume: bool) -> list[str]:
    """Launch, wait until both ranks are held at ``point`` of ``step``, SIGKILL every process of the run (checked
    dead); return their command lines. The first run (inside the step-4 save) is checked by _check_held_run first."""
    faults = workdir / f"fault_{point}"
    faults.mkdir(parents=True)
    env = {ENV_POINT: f"{point}:{step}", ENV_DIR: str(faults)}
    if point == "checkpoint" and _network_interface():
        env["GLOO_SOCKET_IFNAME"] = _network_interface()
    proc = launch(config, 2, workdir=workdir, resume=resume, wait=False, extra_env=env)
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
    if point == "checkpoint":
        _check_held_run(config, workdir, faults, tree)
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
