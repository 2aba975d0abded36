"""One writer per run (rlad_megatron/run_lock.py): a second run on an output folder is refused naming the holder;
the lock dies with its holder (never stale, not kept by the holder's forked children); the requeued attempt of the
same Slurm job waits for its predecessor, bounded, and continues its run; the other ranks of a launch wait for
rank 0's record; without flock (or with locks local to each node) the holder's record decides."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from rlad_megatron import cli, run_lock
from rlad_megatron.run_lock import Holder, RunLockError, acquire, follow, lock_path, read_holder

REPO = Path(__file__).resolve().parents[2]
_HOLD = """
import os, sys, time
from rlad_megatron.run_lock import acquire
lock = acquire(sys.argv[1])
if "running" in sys.argv[3:]:
    lock.mark_running()
if "fork" in sys.argv[3:]:
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
print("ready", flush=True)
time.sleep(float(sys.argv[2]))
"""
_SLURM = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch):
    for name in (*_SLURM, "RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", run_lock.ENV_WAIT):
        monkeypatch.delenv(name, raising=False)


def _holder(folder: Path, seconds: float = 60, *flags: str, env: dict | None = None) -> tuple[subprocess.Popen, list]:
    """A process holding the lock of ``folder`` for ``seconds``; returns it and the lines it printed first."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), str(seconds), *flags],
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, stdout=subprocess.PIPE,
                            text=True)
    lines = []
    while not lines or lines[-1] != "ready":
        line = proc.stdout.readline().strip()
        assert line or proc.poll() is None, f"the holder exited ({proc.wait()})"
        lines.append(line)
    return proc, lines


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_run_is_refused_naming_the_holder_and_a_crash_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc, _ = _holder(out, env={"SLURM_JOB_ID": "4242"})
    try:
        with pytest.raises(RunLockError) as err:
            acquire(out)
        text = str(err.value)
        assert f"trainer.output_dir={out} is in use by another run: pid {proc.pid} on host {socket.gethostname()}, " \
               f"Slurm job 4242 (restart 0), since " in text
        assert "Wait for it to finish or stop it, or choose another trainer.output_dir" in text
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
        proc.wait()
    with acquire(out) as lock:  # the kernel released the dead holder's lock
        assert lock.owner and lock.previous.pid == proc.pid and not lock.previous.released
        assert read_holder(lock_path(out)).pid == os.getpid()
    assert read_holder(lock_path(out)).released


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path: Path) -> None:
    proc, lines = _holder(tmp_path, 60, "fork")
    child = int(lines[0])
    try:
        deadline = time.monotonic() + 10
        while any(f.path == str(lock_path(tmp_path)) for f in psutil.Process(child).open_files()):
            assert time.monotonic() < deadline, "the forked child kept the lock file open"
            time.sleep(0.05)  # its at-fork handler has not run yet
        _stop(proc)
        assert psutil.pid_exists(child)
        with acquire(tmp_path) as lock:  # the holder is dead; its child, still alive, holds nothing
            assert lock.previous.pid == proc.pid
    finally:
        os.kill(child, signal.SIGKILL)


def test_requeued_slurm_job_waits_for_its_previous_attempt_then_continues_its_run(tmp_path, monkeypatch) -> None:
    proc, _ = _holder(tmp_path, 1.5, "running", env={"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"})
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    said: list[str] = []
    started = time.monotonic()
    try:
        with acquire(tmp_path, say=said.append) as lock:
            assert time.monotonic() - started > 0.5  # it waited for the previous attempt
            assert lock.requeued and lock.previous.slurm_restart == 0
    finally:
        _stop(proc)
    assert len(said) == 1 and "is still held by the previous attempt of Slurm job 77" in said[0]
    assert f"pid {proc.pid}" in said[0] and "waiting up to 300 s" in said[0]


def test_the_wait_is_bounded_and_another_job_never_waits(tmp_path: Path, monkeypatch) -> None:
    proc, _ = _holder(tmp_path, 60, env={"SLURM_JOB_ID": "77"})
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "78")  # another job: refused at once
        started = time.monotonic()
        with pytest.raises(RunLockError, match="is in use by another run"):
            acquire(tmp_path, say=lambda _: None)
        assert time.monotonic() - started < 1
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        monkeypatch.setenv(run_lock.ENV_WAIT, "1")
        with pytest.raises(RunLockError, match=rf"still held by the previous attempt of Slurm job 77 .*pid {proc.pid}"
                                               r".* after waiting 1 s \(RLAD_RUN_LOCK_WAIT_S\)"):
            acquire(tmp_path, say=lambda _: None)
    finally:
        _stop(proc)


def test_a_requeued_job_whose_first_attempt_was_refused_does_not_take_over_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "90")
    with acquire(tmp_path):  # attempt 0 took the lock but never got past the folder checks (mark_running)
        pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with acquire(tmp_path) as lock:
        assert not lock.requeued
        lock.mark_running()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    with acquire(tmp_path) as lock:
        assert lock.requeued


def test_other_ranks_wait_for_rank0_to_record_their_launch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29123")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunLockError, match=r"rank 0 did not take the lock on trainer.output_dir=.* within 0 s"):
        follow(tmp_path, timeout_s=0.3)
    (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(dataclasses.asdict(
        dataclasses.replace(Holder.here(), pid=1, launch="another launch"))))
    with pytest.raises(RunLockError):
        follow(tmp_path, timeout_s=0.3)  # a record of another launch is not rank 0's
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(lock=follow(tmp_path, timeout_s=10)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()
    with acquire(tmp_path):
        waiter.join(timeout=10)
    assert not got["lock"].owner and got["lock"].holder.pid == os.getpid()


def test_without_flock_or_with_node_local_locks_the_record_decides(tmp_path: Path, monkeypatch) -> None:
    path = lock_path(tmp_path)

    def record(**changes) -> None:
        path.write_text(json.dumps(dataclasses.asdict(dataclasses.replace(Holder.here(), **changes))))

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = psutil.Process(sleeper.pid).create_time()
        monkeypatch.setattr(run_lock, "_try_flock", lambda fd: None)  # e.g. Lustre mounted -o noflock
        record(pid=sleeper.pid, start=start)  # a live process of this host
        with pytest.raises(RunLockError, match=f"pid {sleeper.pid} on host"):
            acquire(tmp_path)
        record(pid=sleeper.pid, start=start - 100)  # that pid, reused by another process: the holder is gone
        with acquire(tmp_path) as lock:
            assert lock.previous.pid == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
    record(host="node-b", pid=12)  # another host, fresh heartbeat
    with pytest.raises(RunLockError, match="pid 12 on host node-b"):
        acquire(tmp_path)
    monkeypatch.undo()
    # flock granted here, but an unreleased holder on another node beats: its lock may be local to that node
    with pytest.raises(RunLockError, match=r"not visible from this host, but its heartbeat is \d+ s old .* start "
                                           r"again in \d+ s"):
        acquire(tmp_path)
    old = time.time() - run_lock.STALE_S - 5
    os.utime(path, (old, old))  # its heartbeat stopped: the holder died with its node
    with acquire(tmp_path) as lock:
        assert lock.previous.host == "node-b"


def test_a_folder_the_lock_created_is_removed_again_when_nothing_was_written(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "b"
    with acquire(fresh):
        assert fresh.is_dir()
    assert not fresh.exists()
    with acquire(fresh):
        (fresh / "metrics.jsonl").write_text("")
    assert read_holder(lock_path(fresh)).released


def _fake_inputs(tmp_path: Path) -> list[str]:
    folder = tmp_path / "student"  # passes the model-folder check; grpo: no teacher whose tokenizer is compared
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    data = tmp_path / "train.jsonl"  # a data file that passes the data check (which comes first)
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    return [f"model.student={folder}", "loss.algorithm=grpo", f"data.train_files={data}"]


def test_train_on_a_folder_in_use_is_refused_before_anything_loads(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    proc, _ = _holder(out)
    try:
        started = time.perf_counter()
        rc = cli.main(["train", *_fake_inputs(tmp_path), f"trainer.output_dir={out}", "trainer.resume=auto"])
        assert rc == 2 and time.perf_counter() - started < 5
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is in use by another run: pid {proc.pid} on host" in err
        assert sorted(p.name for p in out.iterdir()) == [run_lock.LOCK_FILE]  # nothing written
    finally:
        _stop(proc)
