"""Run reward functions so that a bad sample can never stop (or hang) a run.

Every call is guarded: an exception, or a reward that is NaN or infinite, gives ``RewardResult.failed`` (reward 0)
and increments ``errors``; a call that runs past ``timeout_s`` gives reward 0 and increments ``timeouts``.

``score_many`` (a step's samples) runs the ``"process"`` backend on a pool of up to ``max_workers`` workers, kept
from one call to the next: a worker stuck on a hostile sample does not hold up the rest, which move on to the other
workers. A step with fewer than ``max_workers`` hostile samples thus takes about one timeout, not one timeout per
hostile sample (plus, once, the workers' start-up, and the restart of those killed on a timeout).

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

import collections
import dataclasses
import math
import multiprocessing as mp
import threading
import time
from multiprocessing.connection import Connection, wait
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
            conn.send(("ok", _checked(fn(completion, record))))
        except BaseException as exc:  # noqa: BLE001 - a reward must never kill the worker
            conn.send(("err", f"{type(exc).__name__}: {exc}"[:500]))


def _checked(result: Any) -> RewardResult:
    """The reward function's result, or an exception saying why it cannot be used."""
    if not isinstance(result, RewardResult):
        raise TypeError(f"reward function returned {type(result).__name__}, expected RewardResult")
    if not isinstance(result.score, (int, float)) or not math.isfinite(result.score):
        raise ValueError(f"reward function returned a non-finite reward {result.score!r}")
    return result


@dataclasses.dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    ready: bool = False
    started: float = 0.0
    job: int | None = None
    """Index of the sample it is scoring."""
    since: float = 0.0
    """When that sample was sent."""


class RewardGuard:
    """Score completions with ``fn`` under a timeout and exception guard. Thread-safe (one call at a time)."""

    def __init__(self, fn: RewardFn, timeout_s: float = 10.0, backend: str = "auto",
                 startup_timeout_s: float = 120.0, max_workers: int = 8) -> None:
        if backend not in ("auto", "process", "inline"):
            raise ValueError(f"reward guard backend must be 'auto', 'process' or 'inline', got {backend!r}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"reward timeout_s must be a finite number > 0, got {timeout_s}")
        if max_workers < 1:
            raise ValueError(f"reward max_workers must be >= 1, got {max_workers}")
        if backend == "auto":
            # A task's bound ``reward`` method: ask the task; a plain function: its ``may_hang`` attribute.
            owner = getattr(fn, "__self__", None)
            may_hang = bool(getattr(owner, "reward_may_hang", False) or getattr(fn, "may_hang", False))
            backend = "process" if may_hang else "inline"
        self.fn = fn
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.backend = backend
        self.max_workers = int(max_workers)
        self.stats = RewardStats()
        self._pool: list[_Worker] = []
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
        """``score`` over (completion, record) pairs, in order; the process backend scores them concurrently."""
        items = list(items)
        if self.backend == "inline" or len(items) <= 1:
            return [self.score(c, r) for c, r in items]
        with self._lock:
            self.stats.calls += len(items)
            results = self._score_pool(items)
            errors = [r.error for r in results if r.error]
            if errors:
                self.stats.last_error = errors[-1]
            return results

    def start_workers(self, count: int | None = None) -> int:
        """Start ``score_many``'s pool (``count`` workers, default ``max_workers``) and wait until every one is ready,
        so that the first step does not pay for their start-up. Returns the number of ready workers."""
        if self.backend != "process":
            return 0
        with self._lock:
            target = min(self.max_workers, count or self.max_workers)
            while len(self._pool) < target:
                self._pool.append(self._spawn())
            results: list[RewardResult | None] = []
            while any(not w.ready for w in self._pool):
                pending = [w for w in self._pool if not w.ready]
                deadline = min(w.started for w in pending) + self.startup_timeout_s
                wait([w.conn for w in pending] + [w.proc.sentinel for w in pending],
                     timeout=max(0.0, deadline - time.monotonic()))
                self._collect(results)
            return len(self._pool)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        with self._lock:
            self._stop_worker(graceful=True)
            for worker in self._pool:
                self._kill(worker, graceful=True)
            self._pool = []

    def __enter__(self) -> "RewardGuard":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        try:
            self._stop_worker(graceful=False)
            for worker in self._pool:
                self._kill(worker, graceful=False)
        except Exception:  # noqa: BLE001
            pass

    # -- backends -----------------------------------------------------------------------------------------------
    def _score_inline(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        try:
            return _checked(self.fn(completion, record))
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

    # -- the pool of score_many ----------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.fn), daemon=True, name="rlad-reward-worker")
        proc.start()
        child.close()
        return _Worker(proc=proc, conn=parent, started=time.monotonic())

    @staticmethod
    def _kill(worker: _Worker, graceful: bool) -> None:
        if graceful and worker.proc.is_alive() and worker.ready and worker.job is None:
            try:
                worker.conn.send(None)
                worker.proc.join(timeout=2.0)
            except (OSError, BrokenPipeError):
                pass
        if worker.proc.is_alive():
            worker.proc.kill()
            worker.proc.join(timeout=5.0)
        worker.conn.close()

    def _score_pool(self, items: list[tuple[str, Mapping[str, Any]]]) -> list[RewardResult]:
        """Deal samples to idle workers (up to ``max_workers`` of them, started on first need and kept for the next
        calls); a sample past ``timeout_s`` is failed and its worker replaced."""
        results: list[RewardResult | None] = [None] * len(items)
        queue = collections.deque(range(len(items)))
        target = min(self.max_workers, len(items))
        while queue or any(w.job is not None for w in self._pool):
            now = time.monotonic()
            for worker in [w for w in self._pool if w.ready and w.job is None]:
                if not queue:
                    break
                worker.job, worker.since = queue.popleft(), now
                try:
                    worker.conn.send((items[worker.job][0], dict(items[worker.job][1])))
                except (OSError, BrokenPipeError) as exc:
                    self._fail(results, worker, f"reward worker died: {type(exc).__name__}: {exc}")
            busy = [w for w in self._pool if w.job is not None]
            if queue and len(self._pool) < target:  # first use, or workers killed on a timeout: start them all
                for _ in range(target - len(self._pool)):  # at once (each is a second or two of imports)
                    self._pool.append(self._spawn())
            deadlines = [w.since + self.timeout_s for w in busy] + [w.started + self.startup_timeout_s
                                                                    for w in self._pool if not w.ready]
            wait([w.conn for w in self._pool] + [w.proc.sentinel for w in self._pool],
                 timeout=max(0.0, min(deadlines) - time.monotonic()) if deadlines else None)
            self._collect(results)
        return [r if r is not None else RewardResult.failed("not scored") for r in results]

    def _fail(self, results: list[RewardResult | None], worker: _Worker, error: str, timeout: bool = False) -> None:
        if worker.job is not None:
            results[worker.job] = RewardResult.failed(error)
            if timeout:
                self.stats.timeouts += 1
            else:
                self.stats.errors += 1
        self._pool.remove(worker)
        self._kill(worker, graceful=False)

    def _collect(self, results: list[RewardResult | None]) -> None:
        now = time.monotonic()
        for worker in list(self._pool):
            try:
                has_message = worker.conn.poll()
            except (OSError, EOFError):
                has_message = False
            if has_message:
                try:
                    status, payload = worker.conn.recv()
                except (EOFError, OSError) as exc:
                    self._fail(results, worker, f"reward worker died: {type(exc).__name__}: {exc}")
                    continue
                if status == "ready":
                    worker.ready = True
                elif worker.job is not None:
                    if status == "ok":
                        results[worker.job] = payload
                    else:
                        self.stats.errors += 1
                        results[worker.job] = RewardResult.failed(payload)
                    worker.job = None
                continue
            if worker.job is not None and now - worker.since > self.timeout_s:
                self._fail(results, worker, f"timeout after {self.timeout_s:g} s", timeout=True)
            elif not worker.proc.is_alive():
                self._fail(results, worker, "reward worker died")
            elif not worker.ready and now - worker.started > self.startup_timeout_s:
                self._fail(results, worker, "")
                raise RuntimeError(f"reward worker did not start within {self.startup_timeout_s:g} s")

    def _start_worker(self) -> None:
        worker = self._spawn()
        self._proc, self._conn = worker.proc, worker.conn
        # The worker imports the reward's modules first (seconds); that must not count against a sample's timeout.
        if not worker.conn.poll(self.startup_timeout_s):
            self._stop_worker(graceful=False)
            raise RuntimeError(f"reward worker did not start within {self.startup_timeout_s:g} s")
        worker.conn.recv()

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
