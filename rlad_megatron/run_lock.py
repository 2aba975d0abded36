"""One writer per run: a training run holds an exclusive lock on its ``trainer.output_dir`` for its whole life.

    lock = hold_run_lock(output_dir, rank0=os.environ.get("RANK", "0") == "0")   # before any model loads
    ...                                                                             # the run
    lock.release()                                                                  # or the process ends

Global rank 0 (the first process of node 0) holds ``flock(LOCK_EX)`` on ``<output_dir>/.run.lock``; the kernel
releases it when that process ends, however it ends, so a crash never leaves a stale lock (children the holder
forks do not inherit it). The same file holds the holder's record (JSON: host, pid and start time, Slurm job id and
restart count, torchrun run id and restart count, the launch) and its heartbeat (the file's mtime, touched every
:data:`HEARTBEAT_S` seconds). The other ranks of the launch touch nothing in the folder until rank 0 has recorded
their launch there, so a refused run leaves nothing behind.

A second run on the folder is refused with :class:`RunLockError` naming the holder. A successor of the holder waits
instead (up to ``RLAD_RUN_LOCK_WAIT_S`` seconds, default :data:`DEFAULT_WAIT_S`, saying so): the requeued attempt of
the same Slurm job (same ``SLURM_JOB_ID``, larger ``SLURM_RESTART_COUNT``), whose old processes may still be
shutting down, or torchrun's restart of the ranks (same run id, larger restart count). A requeued attempt whose
predecessor got past the output-folder checks continues its run (:attr:`RunLock.requeued`).

Shared filesystems (docs/reliability.md): flock is coherent across nodes on local disks, on NFS with locking (Linux
maps flock to NFS byte-range locks) and on Lustre mounted with ``-o flock``; it is local to each node on NFS mounted
``nolock`` or ``local_lock=flock|all`` and on Lustre with ``-o localflock``, and refused on Lustre with
``-o noflock``. Hence the record: a lock granted here while the record names an unreleased holder on another host
whose heartbeat is younger than :data:`STALE_S` counts as held; without flock at all the record decides alone (same
host: is that pid, with that start time, alive; another host: the heartbeat's age).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

LOCK_FILE = ".run.lock"
ENV_WAIT = "RLAD_RUN_LOCK_WAIT_S"
DEFAULT_WAIT_S = 300.0
"""How long a successor waits for its predecessor's lock (a node's NFS lease can take 90 s to expire)."""
HEARTBEAT_S = 15.0
STALE_S = 90.0
"""A record on another host whose heartbeat is older than this is taken for a dead holder."""
_POLL_S = 0.5
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP})


class RunLockError(RuntimeError):
    """The output folder is in use by another run (or its lock cannot be taken); the message names the holder."""


def _env_int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


def _process_start(pid: int) -> float | None:
    # lazy: psutil only to read a holder's process start time
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def launch_key() -> str:
    """The same string on every rank of one launch (one attempt of one job), different for other live launches."""
    names = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")
    return "|".join(os.environ.get(name, "") for name in names)


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run's lock."""

    host: str
    pid: int
    start: float
    """The holder process's start time (tells a live pid from a reused one)."""
    since: float
    launch: str
    slurm_job: str = ""
    slurm_restart: int = 0
    torchrun_run: str = ""
    torchrun_restart: int = 0
    requeued: bool = False
    """This holder is a restart of the Slurm job whose earlier attempt ran in the folder: it continues that run."""
    running: bool = False
    """The holder got past the output-folder checks: the run in the folder is its job's."""
    released: bool = False

    @classmethod
    def here(cls) -> "Holder":
        return cls(host=socket.gethostname(), pid=os.getpid(), start=_process_start(os.getpid()) or 0.0,
                   since=time.time(), launch=launch_key(), slurm_job=os.environ.get("SLURM_JOB_ID", ""),
                   slurm_restart=_env_int("SLURM_RESTART_COUNT"),
                   torchrun_run=os.environ.get("TORCHELASTIC_RUN_ID", ""),
                   torchrun_restart=_env_int("TORCHELASTIC_RESTART_COUNT"))

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job} (restart {self.slurm_restart})" if self.slurm_job else ""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on host {self.host}{job}, since {since}"

    def same_job_earlier(self, other: "Holder") -> bool:
        """``other`` is an earlier attempt of this holder's Slurm job."""
        return bool(self.slurm_job) and other.slurm_job == self.slurm_job and other.slurm_restart < self.slurm_restart

    def successor_of(self, other: "Holder") -> str:
        """Why this holder may wait for ``other`` (a restart of the same job), or "" when it may not."""
        if self.same_job_earlier(other):
            return f"the previous attempt of Slurm job {self.slurm_job}"
        if (self.torchrun_run not in ("", "none") and other.torchrun_run == self.torchrun_run
                and other.host == self.host and other.torchrun_restart < self.torchrun_restart):
            return "the ranks torchrun is restarting"
        return ""


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / LOCK_FILE


def read_holder(path: str | Path) -> Holder | None:
    """The record in a lock file (None: no file, empty or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(Holder)}
        return Holder(**{k: v for k, v in data.items() if k in fields})
    except (OSError, ValueError, TypeError):
        return None


def _heartbeat_age(path: Path) -> float:
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return float("inf")


def _may_be_alive(holder: Holder, path: Path, *, flock_works: bool) -> bool:
    """Whether the holder a record names may still run, the lock being free here (``flock_works``) or not
    available on this filesystem."""
    if holder.released:
        return False
    if holder.host == socket.gethostname():
        if flock_works:
            return False  # on one host flock is coherent: the lock is free, so its holder is gone
        start = _process_start(holder.pid)
        return start is not None and abs(start - holder.start) < 1.0
    return _heartbeat_age(path) < STALE_S


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem offers no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in _NO_FLOCK:
            return None
        raise


def _wait_limit() -> float:
    try:
        return max(0.0, float(os.environ.get(ENV_WAIT, DEFAULT_WAIT_S)))
    except ValueError:
        raise RunLockError(f"{ENV_WAIT}={os.environ[ENV_WAIT]!r}: expected a number of seconds") from None


class RunLock:
    """The lock of one run on its output folder: held by global rank 0 (``owner``), observed by the other ranks."""

    def __init__(self, path: Path, holder: Holder, *, fd: int | None = None, previous: Holder | None = None,
                 created_dir: bool = False) -> None:
        self.path = path
        self.holder = holder
        self.previous = previous
        """The record found in the lock file when rank 0 took it (the folder's last writer), if any."""
        self._fd = fd
        self._created_dir = created_dir
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if fd is not None:
            self._write(holder)
            os.register_at_fork(after_in_child=self._forget_in_child)
            self._beat = threading.Thread(target=self._heartbeat, name="rlad-run-lock", daemon=True)
            self._beat.start()

    @property
    def owner(self) -> bool:
        return self._fd is not None

    @property
    def requeued(self) -> bool:
        """This launch is a restart of a Slurm job whose earlier attempt ran in the folder: it continues that run."""
        return self.holder.requeued

    def _write(self, holder: Holder) -> None:
        _write_record(self._fd, holder)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self._fd)
            except OSError:
                pass

    def _forget_in_child(self) -> None:
        """A forked child drops its copy of the descriptor (the lock stays with this process alone)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def mark_running(self) -> None:
        """Record that the run got past its output-folder checks (rank 0; a no-op elsewhere)."""
        if self._fd is not None:
            self.holder = dataclasses.replace(self.holder, running=True)
            self._write(self.holder)

    def release(self) -> None:
        """Give the lock up (rank 0; a no-op elsewhere). A folder this lock created and nothing else wrote into
        is removed again."""
        if self._fd is None:
            return
        self._stop.set()
        fd, self._fd = self._fd, None
        try:
            folder = self.path.parent
            if self._created_dir and os.listdir(folder) == [self.path.name]:
                self.path.unlink()
                folder.rmdir()
            else:
                self._fd = fd
                self._write(dataclasses.replace(self.holder, released=True))
                self._fd = None
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_record(fd: int, holder: Holder) -> None:
    data = json.dumps(dataclasses.asdict(holder), indent=1).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def acquire(output_dir: str | Path, *, say: Callable[[str], None] | None = None) -> RunLock:
    """Take the lock on ``output_dir`` (created if missing) for this process, waiting for a predecessor of this
    launch; raise :class:`RunLockError` naming the holder when another run has it."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    out = Path(output_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunLockError(f"trainer.output_dir={out}: cannot create the folder ({err.strerror or err}); choose "
                           f"another trainer.output_dir") from None
    path = lock_path(out)
    me = Holder.here()
    deadline: float | None = None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunLockError(f"trainer.output_dir={out}: cannot open its lock file {path} ({err.strerror or err})"
                               f"; is the folder writable?") from None
        got = _try_flock(fd)
        if got and os.fstat(fd).st_ino != getattr(_stat(path), "st_ino", None):
            os.close(fd)  # the file was removed or replaced while we opened it: lock the one that is there now
            continue
        previous = read_holder(path)
        blocker = None
        if got is False:
            blocker = previous
        elif previous is not None and previous.pid != os.getpid() and _may_be_alive(previous, path,
                                                                                    flock_works=bool(got)):
            blocker = previous
        if got is not False and blocker is None:
            requeued = bool(previous and previous.running and me.same_job_earlier(previous))
            mine = dataclasses.replace(me, requeued=requeued)
            if got is None:  # no flock here: make sure no other process wrote its record at the same time
                _write_record(fd, mine)
                time.sleep(2 * _POLL_S)
                if (read_holder(path) or mine) != mine:
                    os.close(fd)
                    continue
            return RunLock(path, mine, fd=fd, previous=previous, created_dir=created)
        os.close(fd)
        why = me.successor_of(blocker) if blocker is not None else ""
        if why:
            limit = _wait_limit()
            if deadline is None:
                deadline = time.monotonic() + limit
                say(f"[rlad] trainer.output_dir={out} is still held by {why} ({blocker.describe()}); waiting up to "
                    f"{limit:.0f} s for it to exit")
            if time.monotonic() < deadline:
                time.sleep(_POLL_S)
                continue
            raise RunLockError(
                f"trainer.output_dir={out} is still held by {why} ({blocker.describe()}) after waiting {limit:.0f} s "
                f"({ENV_WAIT}): stop it (kill {blocker.pid} on {blocker.host}, or scancel), then start again")
        raise RunLockError(_refusal(out, path, blocker, got))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def _refusal(out: Path, path: Path, blocker: Holder | None, got: bool | None) -> str:
    if blocker is None:
        who = f"another process (its record in {path} is unreadable)"
    else:
        who = blocker.describe()
    text = f"trainer.output_dir={out} is in use by another run: {who}."
    if got and blocker is not None:  # granted here, but the record says a run on another host is alive
        age = _heartbeat_age(path)
        text += (f" Its lock is not visible from this host, but its heartbeat is {age:.0f} s old (this filesystem "
                 f"may keep locks local to each node). If that run is gone, start again in {STALE_S - age:.0f} s.")
    return text + " Wait for it to finish or stop it, or choose another trainer.output_dir."


def follow(output_dir: str | Path, *, timeout_s: float | None = None) -> RunLock:
    """The other ranks of a launch: wait until rank 0 has recorded this launch in the lock file."""
    path = lock_path(output_dir)
    timeout = timeout_s if timeout_s is not None else _wait_limit() + STALE_S + 60.0
    key = launch_key()
    deadline = time.monotonic() + timeout
    while True:
        holder = read_holder(path)
        if holder is not None and holder.launch == key and not holder.released:
            return RunLock(path, holder)
        if time.monotonic() > deadline:
            raise RunLockError(f"rank {os.environ.get('RANK', '?')}: rank 0 did not take the lock on "
                               f"trainer.output_dir={Path(output_dir)} within {timeout:.0f} s (is the folder on a "
                               f"filesystem every node shares?)")
        time.sleep(0.1)


def hold_run_lock(output_dir: str | Path, *, rank0: bool, say: Callable[[str], None] | None = None) -> RunLock:
    """Rank 0 takes the lock (:func:`acquire`); the other ranks wait until it has (:func:`follow`)."""
    return acquire(output_dir, say=say) if rank0 else follow(output_dir)
