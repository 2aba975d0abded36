"""Run reward functions so that a bad sample can never stop (or hang) a run.

Every call is guarded: an exception gives ``RewardResult.failed`` (reward 0) and increments ``errors``; a call that
runs past ``timeout_s`` gives reward 0 and increments ``timeouts``.

Backends:
- ``"process"``: the reward runs in a persistent worker process (``spawn`` start method, so it is safe from any thread
  of a process that already runs torch/vLLM threads). The parent waits with ``Connection.poll(timeout)``; on timeout
  it kills the worker, which really stops a hung parser (sympy, regex), and starts a fresh one on the next call. This
  works from any thread, unlike ``signal.alarm`` (main thread only, what math-verify uses internally; we turn that off).
- ``"inline"``: call in the current thread, exceptions caught, no timeout. For rewards whose running time is bounded
  by construction (linear-time parsers: the arithmetic and K&K rewards).
- ``"auto"``: ``"process"`` when the reward function declares ``may_hang = True`` (the math reward), else inline.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterable, Mapping

from rlad_megatron.rewards.base import RewardResult

RewardFn = Callable[[str, Mapping[str, Any]], RewardResult]


@dataclasses.dataclass
class RewardStats:
    """Counters of one guard, for metrics: ``reward/errors``, ``reward/timeouts``."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    last_error: str = ""

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        return {f"{prefix}calls": float(self.calls), f"{prefix}errors": float(self.errors),
                f"{prefix}timeouts": float(self.timeouts)}


def _worker_main(conn: Connection, fn: RewardFn) -> None:
    """Worker loop: warm up, say "ready", then receive (completion, record), reply ("ok", result) or ("err", msg)."""
    warmup = getattr(getattr(fn, "__self__", None), "warmup", None)
    if callable(warmup):
        try:  # heavy imports (sympy) happen here, not inside the first sample's timeout
            warmup()
        except Exception:  # noqa: BLE001 - a failing warm-up shows up again, guarded, on the first sample
            pass
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        completion, record = item
        try:
            result = fn(completion, record)
            if not isinstance(result, RewardResult):
                raise TypeError(f"reward function returned {type(result).__name__}, expected RewardResult")
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - a reward must never kill the worker
            conn.send(("err", f"{type(exc).__name__}: {exc}"[:500]))


class RewardGuard:
    """Score completions with ``fn`` under a timeout and exception guard. Thread-safe (one call at a time)."""

    def __init__(self, fn: RewardFn, timeout_s: float = 10.0, backend: str = "auto",
                 startup_timeout_s: float = 120.0) -> None:
        if backend not in ("auto", "process", "inline"):
            raise ValueError(f"reward guard backend must be 'auto', 'process' or 'inline', got {backend!r}")
        if timeout_s <= 0:
            raise ValueError(f"reward timeout_s must be > 0, got {timeout_s}")
        if backend == "auto":
            # A task's bound ``reward`` method: ask the task; a plain function: its ``may_hang`` attribute.
            owner = getattr(fn, "__self__", None)
            may_hang = bool(getattr(owner, "reward_may_hang", False) or getattr(fn, "may_hang", False))
            backend = "process" if may_hang else "inline"
        self.fn = fn
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.backend = backend
        self.stats = RewardStats()
        self._lock = threading.Lock()
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    # -- public -------------------------------------------------------------------------------------------------
    def score(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        """The guarded reward of one completion; never raises (except KeyboardInterrupt)."""
        with self._lock:
            self.stats.calls += 1
            if self.backend == "inline":
                result = self._score_inline(completion, record)
            else:
                result = self._score_in_worker(completion, record)
            if result.error:
                self.stats.last_error = result.error
            return result

    def score_many(self, items: Iterable[tuple[str, Mapping[str, Any]]]) -> list[RewardResult]:
        """``score`` over (completion, record) pairs, in order."""
        return [self.score(c, r) for c, r in items]

    def close(self) -> None:
        """Stop the worker process, if any."""
        with self._lock:
            self._stop_worker(graceful=True)

    def __enter__(self) -> "RewardGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        try:
            self._stop_worker(graceful=False)
        except Exception:  # noqa: BLE001
            pass

    # -- backends -----------------------------------------------------------------------------------------------
    def _score_inline(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        try:
            result = self.fn(completion, record)
            if not isinstance(result, RewardResult):
                raise TypeError(f"reward function returned {type(result).__name__}, expected RewardResult")
            return result
        except Exception as exc:  # noqa: BLE001
            self.stats.errors += 1
            return RewardResult.failed(f"{type(exc).__name__}: {exc}"[:500])

    def _score_in_worker(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        try:
            if self._proc is None or not self._proc.is_alive():
                self._start_worker()
            assert self._conn is not None
            self._conn.send((completion, dict(record)))
            if not self._conn.poll(self.timeout_s):
                self.stats.timeouts += 1
                self._stop_worker(graceful=False)
                return RewardResult.failed(f"timeout after {self.timeout_s:g} s")
            status, payload = self._conn.recv()
        except (EOFError, OSError, RuntimeError) as exc:
            self.stats.errors += 1
            self._stop_worker(graceful=False)
            return RewardResult.failed(f"reward worker died: {type(exc).__name__}: {exc}")
        if status == "ok":
            return payload
        self.stats.errors += 1
        return RewardResult.failed(payload)

    def _start_worker(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.fn), daemon=True, name="rlad-reward-worker")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        # The worker imports the reward's modules first (seconds); that must not count against a sample's timeout.
        if not parent.poll(self.startup_timeout_s):
            self._stop_worker(graceful=False)
            raise RuntimeError(f"reward worker did not start within {self.startup_timeout_s:g} s")
        parent.recv()

    def _stop_worker(self, graceful: bool) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if proc is None:
            return
        if graceful and conn is not None and proc.is_alive():
            try:
                conn.send(None)
                proc.join(timeout=2.0)
            except (OSError, BrokenPipeError):
                pass
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)
        if conn is not None:
            conn.close()
