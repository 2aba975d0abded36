"""Run a function on N gloo ranks (separate processes) with Megatron's parallel state set up, from a test.

    from rlad_megatron.testing.distributed import run_distributed

    def _body(scale):                       # module-level, in the test file
        from megatron.core import parallel_state as ps
        return ps.get_tensor_model_parallel_rank() * scale

    def test_tp2():
        assert run_distributed(_body, world_size=2, tp=2, args=(10,)) == [0, 10]

Each rank is a fresh ``python -m rlad_megatron.testing._rank_main`` process in its own process session (or, where
the session enabled it, a child forked from fork_server.py's pre-imported server, set up the same way): the body's
module is loaded from its file, the gloo group is joined, the CPU patches are applied and
``initialize_model_parallel(tp, pp)`` is called (unless ``init_megatron=False``). The body's return values come
back as a list indexed by rank (they must pickle). A failure on any rank raises ``DistributedRunError`` with every
failing rank's traceback and the tail of its output; the other ranks, which would wait forever in a collective, are
killed. A run past ``timeout`` is killed, process group and all, so nothing is left behind.
"""
from __future__ import annotations

import inspect
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from rlad_megatron.parallel import free_port
from rlad_megatron.testing import fork_server


class DistributedRunError(RuntimeError):
    pass


_INSIDE_RANK = "RLAD_INSIDE_DISTRIBUTED_RANK"
_SCRIPT_MODULE = "_rlad_distributed_script_body"


def _tail(path: Path, limit: int = 4000) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return text[-limit:]


def _kill(procs: list) -> None:
    # Kill each rank's whole session even when the rank itself has exited: a rank leaves by os._exit, which skips
    # the atexit shutdown of helper processes it spawned (megatron's dist-checkpoint writer starts a
    # multiprocessing Manager), and those would otherwise live on as orphans holding ~300 MB each.
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc.poll() is None:  # not yet reaped: the rank itself too (a group lookup can miss a rank being reaped)
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *,
    tp: int = 1,
    pp: int = 1,
    vpp: int | None = None,
    ep: int = 1,
    args: tuple = (),
    kwargs: dict | None = None,
    timeout: float = 240.0,
    init_megatron: bool = True,
    seed: int = 1234,
    env: dict[str, str] | None = None,
    failure_grace_s: float = 5.0,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` ranks; return the per-rank results (list indexed by rank)."""
    if fn.__qualname__ != fn.__name__ or "<locals>" in fn.__qualname__:
        raise ValueError(f"run_distributed needs a module-level function, got {fn.__qualname__}")
    if os.environ.get(_INSIDE_RANK):
        # A body module re-executed in a rank called us again: refuse rather than spawn ranks recursively.
        raise RuntimeError("run_distributed was called inside a rank of run_distributed (nested runs are not supported)")
    workdir = Path(tempfile.mkdtemp(prefix="rlad_dist_"))
    spec = {
        # A body defined in a script is loaded under another name in the ranks, so the script's
        # `if __name__ == "__main__":` block (which called us) does not run again there.
        "module_name": _SCRIPT_MODULE if fn.__module__ == "__main__" else fn.__module__,
        "module_file": inspect.getfile(fn),
        "function": fn.__name__,
        "args": args,
        "kwargs": kwargs or {},
        "tp": tp,
        "pp": pp,
        "vpp": vpp,
        "ep": ep,
        "seed": seed,
        "init_megatron": init_megatron,
        "sys_path": [p for p in sys.path if p],
    }
    (workdir / "spec.pkl").write_bytes(pickle.dumps(spec))
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // world_size)
    procs: list[subprocess.Popen | fork_server.RankProcess] = []
    rank_envs = []
    for rank in range(world_size):
        rank_env = dict(os.environ)
        rank_env.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads),
            PYTHONUNBUFFERED="1", **{_INSIDE_RANK: "1"},
        )
        rank_env.update(env or {})
        rank_envs.append(rank_env)
    server = fork_server.server_for(rank_envs[0], fork_server.flavour_for(spec["module_file"]))
    try:
        for rank, rank_env in enumerate(rank_envs):
            if server is not None:
                procs.append(server.fork_rank(workdir, rank_env, workdir / f"rank{rank}.log", os.getcwd()))
                continue
            log = open(workdir / f"rank{rank}.log", "w")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "rlad_megatron.testing._rank_main", str(workdir)],
                    env=rank_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
            log.close()
    except BaseException:
        _kill(procs)
        raise

    deadline = time.monotonic() + timeout
    first_failure: float | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes) and first_failure is None:
                first_failure = time.monotonic()
            if first_failure is not None and time.monotonic() - first_failure > failure_grace_s:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        timed_out = any(p.poll() is None for p in procs)
        _kill(procs)

    failures = []
    results: list[Any] = []
    for rank, proc in enumerate(procs):
        error = workdir / f"error{rank}.txt"
        result = workdir / f"result{rank}.pkl"
        if error.exists():
            failures.append(f"--- rank {rank} raised:\n{error.read_text()}")
        elif proc.returncode != 0 or not result.exists():
            why = "was killed (timeout, or waiting on a failed rank)" if timed_out else f"exited {proc.returncode}"
            failures.append(f"--- rank {rank} {why}; output tail:\n{_tail(workdir / f'rank{rank}.log')}")
        else:
            results.append(pickle.loads(result.read_bytes()))
    if failures:
        header = f"{fn.__module__}.{fn.__name__} on {world_size} ranks (tp={tp}, pp={pp})"
        if timed_out and first_failure is None:
            header += f" timed out after {timeout:.0f}s"
        raise DistributedRunError(header + "\n" + "\n".join(failures) + f"\n(logs in {workdir})")
    return results
