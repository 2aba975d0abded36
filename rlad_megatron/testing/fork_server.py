"""A pre-imported fork server for ``run_distributed``'s ranks: torch and megatron-core imported once per session.

A fresh rank process spends ~8-11 s importing torch and megatron.core before it runs a body of well under a second;
a suite starts ~130 of them. The server is one long-lived process that imports those modules once and then forks a
child per rank on request. The child is what a fresh ``python -m rlad_megatron.testing._rank_main`` would be: its own
process session, the caller's environment, working directory and log file, its own random seeds; it runs the same
``_rank_main.main``. Its pid comes back at once (the caller kills its session as before) and its exit status when
the server reaps it, over the same Unix socket connection (a filesystem socket: nothing on the network).

Why fork is safe here: the server only imports (no collectives, no process group, no CUDA), and it runs with
``OMP_NUM_THREADS=1`` so that no OpenMP worker thread exists when it forks (a child inherits a pool whose threads it
does not have); the child sets its own thread count as a fresh rank does. Megatron's CPU patches are applied only in
the children (``apply()`` patches modules imported before it too), so every child starts unpatched.

Two servers at most, each started on first use: one for bodies that use vLLM (it has imported vLLM too), one for
the others. Used when a session enables it (tests/conftest.py does: started on the first run, stopped by pid at the
session's end, or when its parent dies); ``run_distributed`` spawns fresh processes as before when it is not
enabled, when it cannot start, or when a run's environment differs from the server's in a variable read at import
time.
"""
from __future__ import annotations

import atexit
import importlib
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What the rank bodies import; each preload that fails is simply left to the child, as in a fresh process.
PRELOAD = (
    "torch",
    "torch.distributed",
    "megatron.core",
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel",
    "megatron.core.pipeline_parallel",
    "megatron.core.optimizer",
    "megatron.core.dist_checkpointing",
    "megatron.core.models.gpt",
    "megatron.core.transformer",
    "rlad_megatron.parallel",
    "rlad_megatron.compat.megatron_cpu",
    "rlad_megatron.models",
    "rlad_megatron.learner.policy",
    "rlad_megatron.testing.tiny_gpt",
    "rlad_megatron.testing._rank_main",
)
# Environment variables that the preloaded modules read when imported: a run that sets them differently than the
# server had them cannot use the server (it spawns fresh processes instead).
_IMPORT_TIME_PREFIXES = ("PYTHON", "LD_", "TORCH", "PYTORCH", "MEGATRON", "NVTE", "CUDA", "KMP_", "MKL_", "WANDB")
# What importing vLLM sets in the importing process (measured with its CPU build): a test that runs vLLM in the pytest
# process leaves them there, and a fresh rank's own imports would set them the same way. They reach the child with
# the caller's values; they are no reason to spawn. (LD_LIBRARY_PATH: vLLM's cv2 appends its lib64 folder.)
_SET_BY_IMPORTS_IN_CALLER = {"PYTHONUNBUFFERED", "TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_COMPILE_THREADS",
                             "PYTORCH_NVML_BASED_CUDA_CHECK", "LD_LIBRARY_PATH"}
_NOT_IMPORT_TIME = {"PYTHONUNBUFFERED", *_SET_BY_IMPORTS_IN_CALLER}
_HEADER = struct.Struct("!I")
_STATUS = struct.Struct("!i")
_ENABLE_ENV = "RLAD_DIST_FORK_SERVER"  # "0" turns the server off even where a session enables it
_READY_TIMEOUT_S = 300.0


def import_time_env(env: dict[str, str], ignore: frozenset[str] = frozenset()) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if k.startswith(_IMPORT_TIME_PREFIXES) and k not in _NOT_IMPORT_TIME and k not in ignore}


# ---------------------------------------------------------------------------------------------------------------
# Client side (the pytest process)
# ---------------------------------------------------------------------------------------------------------------


class RankProcess:
    """A forked rank, with the part of ``subprocess.Popen``'s interface that ``run_distributed`` uses."""

    def __init__(self, pid: int, conn: socket.socket):
        self.pid = pid
        self.returncode: int | None = None
        self._conn = conn

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            data = _recv_exact(self._conn, _STATUS.size)
            # No status: the server died before reaping this rank (its files still say what happened).
            self.returncode = _STATUS.unpack(data)[0] if data else -1
            self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"rank pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode


class ForkServer:
    """The client's handle on one server process."""

    def __init__(self, env: dict[str, str], cwd: str, preload: tuple[str, ...] = PRELOAD):
        self._dir = Path(tempfile.mkdtemp(prefix="rlad_forkserver_"))
        self.socket_path = str(self._dir / "socket")
        self.log_path = self._dir / "server.log"
        self.env = env
        self.set_by_imports: frozenset[str] = frozenset()
        server_env = {**env, "OMP_NUM_THREADS": "1"}
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlad_megatron.testing.fork_server", self.socket_path, ",".join(preload)],
                env=server_env, cwd=cwd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not os.path.exists(self.socket_path + ".ready"):
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the fork server exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fork server was not ready after {_READY_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        # Variables the preloaded modules set themselves (torch sets TORCHINDUCTOR_CACHE_DIR) are no difference:
        # a fresh rank's imports set them the same way.
        self.set_by_imports = frozenset(json.loads(Path(self.socket_path + ".ready").read_text()))

    def differences(self, env: dict[str, str]) -> list[str]:
        """The import-time variables that ``env`` sets differently than the server had them."""
        mine = import_time_env(self.env, self.set_by_imports)
        theirs = import_time_env(env, self.set_by_imports)
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))

    def fork_rank(self, workdir: Path, env: dict[str, str], log_path: Path, cwd: str) -> RankProcess:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.socket_path)
        payload = pickle.dumps({"workdir": str(workdir), "env": env, "log": str(log_path), "cwd": cwd,
                                "set_by_imports": sorted(self.set_by_imports)})
        conn.sendall(_HEADER.pack(len(payload)) + payload)
        data = _recv_exact(conn, _STATUS.size)
        if not data:
            conn.close()
            raise RuntimeError(f"the fork server did not fork a rank (log: {self.log_path})")
        return RankProcess(_STATUS.unpack(data)[0], conn)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the server kills what is left of its ranks and exits
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for path in (self.socket_path, self.socket_path + ".ready", self.log_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            self._dir.rmdir()
        except OSError:
            pass


# Bodies that use vLLM fork from a second server that has imported it too (~5-20 s per rank otherwise); the others
# never see vLLM's import-time side effects (environment variables, registered ops).
FLAVOURS = {"megatron": PRELOAD, "vllm": (*PRELOAD, "vllm", "rlad_megatron.rollout.vllm_engine")}

_enabled = False
_servers: dict[str, ForkServer] = {}
_broken: dict[str, str] = {}


def enable() -> None:
    """Let ``run_distributed`` fork its ranks from servers in this process (each started on first use)."""
    global _enabled
    _enabled = os.environ.get(_ENABLE_ENV, "1") != "0"


def flavour_for(module_file: str) -> str:
    """Which server a body's module needs: "vllm" when its source mentions vLLM."""
    try:
        return "vllm" if "vllm" in Path(module_file).read_text(errors="replace") else "megatron"
    except OSError:
        return "megatron"


def stop() -> None:
    """Stop this process's servers, if any run (by pid; also registered with atexit)."""
    while _servers:
        _servers.pop(next(iter(_servers))).stop()


def server_for(env: dict[str, str], flavour: str = "megatron") -> ForkServer | None:
    """The running server of ``flavour`` if it can fork ranks for a run with this environment; None: spawn fresh
    processes."""
    if not _enabled or flavour in _broken:
        return None
    server = _servers.get(flavour)
    if server is None:
        try:
            server = ForkServer(_base_env(env), os.getcwd(), FLAVOURS[flavour])
            server.wait_ready()
        except Exception as exc:  # noqa: BLE001 - any failure means: spawn as before, and say why once
            _broken[flavour] = str(exc)
            print(f"rlad_megatron.testing.fork_server: not used ({exc}); ranks start as fresh processes",
                  file=sys.stderr)
            if server is not None:
                server.stop()
            return None
        if not _servers:
            atexit.register(stop)
        _servers[flavour] = server
    if server.proc.poll() is not None:
        _broken[flavour] = f"the fork server exited {server.proc.returncode}"
        return None
    differences = server.differences(env)
    if differences:
        print(f"rlad_megatron.testing.fork_server: this run spawns fresh ranks: {differences} differ from the "
              "server's environment", file=sys.stderr)
        return None
    return server


def _base_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith(("RANK", "LOCAL_", "WORLD_SIZE", "MASTER_"))}


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


# ---------------------------------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------------------------------


def _preload(modules: list[str]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - the child imports it itself and reports the error
                print(f"preload {name} failed: {exc!r}", flush=True)


def _child(request: dict[str, Any], close_fds: list[int], ready_w: int) -> None:
    """In the forked child: become a fresh rank (session, fds, env, cwd, seeds), then run it. Never returns."""
    code = 1
    try:
        os.setsid()
        os.close(ready_w)  # the server replies with our pid only now, so killpg(pid) always reaches this session
        for fd in close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        # The caller's environment, plus what the preloaded modules' imports set in the server (a fresh rank's
        # imports would set them too) unless the caller sets them itself.
        set_by_imports = {k: os.environ[k] for k in request["set_by_imports"] if k in os.environ}
        os.environ.clear()
        os.environ.update(set_by_imports)
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = [sys.argv[0], request["workdir"]]
        import random

        import torch

        random.seed()  # a fresh process draws new seeds; forked ones would all share the server's
        torch.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        from rlad_megatron.testing import _rank_main

        code = _rank_main.main(Path(request["workdir"]))
    except BaseException:  # noqa: BLE001 - whatever happens, the child leaves here and never runs server code
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def serve(socket_path: str, preload: list[str]) -> None:
    before = dict(os.environ)
    _preload(preload)
    set_by_imports = sorted(k for k, v in os.environ.items() if before.get(k) != v)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    Path(socket_path + ".ready").write_text(json.dumps(set_by_imports))
    waiting: dict[int, socket.socket] = {}  # rank pid -> the connection its exit status goes to
    stdin = sys.stdin.fileno()
    try:
        while True:
            readable = select.select([listener, stdin], [], [], 0.05)[0]
            if stdin in readable and not os.read(stdin, 4096):
                break  # the client closed our stdin (stop()) or died
            if listener in readable:
                conn, _ = listener.accept()
                header = _recv_exact(conn, _HEADER.size)
                request = pickle.loads(_recv_exact(conn, _HEADER.unpack(header)[0])) if header else None
                if request is None:
                    conn.close()
                else:
                    ready_r, ready_w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(ready_r)
                        _child(request, [listener.fileno(), stdin, conn.fileno(),
                                         *(c.fileno() for c in waiting.values())], ready_w)
                    os.close(ready_w)
                    os.read(ready_r, 1)  # EOF once the child has its own session (or has died)
                    os.close(ready_r)
                    waiting[pid] = conn
                    conn.sendall(_STATUS.pack(pid))
            _reap(waiting)
    finally:
        for pid in waiting:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        listener.close()


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # the client has gone
            conn.close()


if __name__ == "__main__":
    serve(sys.argv[1], [name for name in sys.argv[2].split(",") if name])
