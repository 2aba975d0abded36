"""Ranks forked from the session's pre-imported server (rlad_megatron/testing/fork_server.py) are set up like fresh
processes: the caller's environment and working directory, a session and random seeds of their own; a failure comes
back with its traceback, a hung rank is killed at the timeout, and a run whose import-time environment differs from
the server's spawns fresh processes."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rlad_megatron.testing import fork_server
from rlad_megatron.testing.distributed import DistributedRunError, run_distributed

pytestmark = pytest.mark.distributed


def _describe(name: str) -> dict:
    import random

    import psutil

    return {"pid": os.getpid(), "sid": os.getsid(0), "cwd": os.getcwd(), "var": os.environ.get(name),
            "rank": os.environ["RANK"], "random": random.random(), "forked": "fork_server" in " ".join(
                psutil.Process().cmdline()), "threads": int(os.environ["OMP_NUM_THREADS"])}


def _fail() -> None:
    raise ValueError("rank body failed on purpose")


def _hang(pid_dir: str) -> None:
    Path(pid_dir, f"{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_forked_ranks_are_set_up_like_fresh_processes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RLAD_TEST_SET_AFTER_SERVER_START", "yes")  # not read at import: the server serves this run
    monkeypatch.chdir(tmp_path)
    reports = run_distributed(_describe, 2, args=("RLAD_TEST_SET_AFTER_SERVER_START",), init_megatron=False)
    if os.environ.get("RLAD_DIST_FORK_SERVER") != "0":
        assert all(r["forked"] for r in reports), reports
    assert [r["rank"] for r in reports] == ["0", "1"]
    assert all(r["var"] == "yes" and r["cwd"] == str(tmp_path) for r in reports)
    assert all(r["sid"] == r["pid"] for r in reports) and reports[0]["pid"] != reports[1]["pid"]
    assert reports[0]["random"] != reports[1]["random"]  # each rank draws its own seed, as a fresh process does
    assert all(r["threads"] == max(1, (os.cpu_count() or 1) // 2) for r in reports)


def test_a_run_with_another_import_time_environment_spawns_fresh_ranks(monkeypatch) -> None:
    monkeypatch.setenv("TORCH_RLAD_TEST_IMPORT_TIME_VARIABLE", "1")  # TORCH*: may be read when torch is imported
    (report,) = run_distributed(_describe, 1, args=("TORCH_RLAD_TEST_IMPORT_TIME_VARIABLE",), init_megatron=False)
    assert not report["forked"] and report["var"] == "1"


def test_a_failing_rank_reports_its_traceback() -> None:
    with pytest.raises(DistributedRunError, match="rank body failed on purpose") as info:
        run_distributed(_fail, 2, init_megatron=False, timeout=120)
    assert "rank 0 raised" in str(info.value) and "rank 1 raised" in str(info.value)


def test_a_hung_rank_is_killed_at_the_timeout(tmp_path) -> None:
    forked = os.environ.get("RLAD_DIST_FORK_SERVER") != "0"  # fresh ranks need longer to start on a loaded machine
    with pytest.raises(DistributedRunError, match="timed out"):
        run_distributed(_hang, 2, args=(str(tmp_path),), init_megatron=False, timeout=10 if forked else 90)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), pids


def test_the_server_stops_by_pid() -> None:
    server = fork_server.ForkServer(dict(os.environ), os.getcwd(), preload=())  # nothing to import: starts at once
    server.wait_ready()
    pid = server.proc.pid
    assert _alive(pid)
    server.stop()
    assert not _alive(pid) and not Path(server.socket_path).exists()
