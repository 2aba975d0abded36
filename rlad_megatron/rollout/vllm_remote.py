"""A disaggregated vLLM engine: the engine runs in its own process; this client drives it.

    engine = RemoteVLLMEngine(VLLMEngineConfig(model=hf_dir, placement="disaggregated"))
    engine.generate(prompts, sampling)                 # commands and results over a multiprocessing Pipe
    engine.request_generate(prompts, sampling)         # asynchronous rollouts: ask now, ...
    results, version = engine.collect_generate()       # ... collect later (with the weight version that sampled)
    engine.request_score(sequences, prompt_lens)       # a teacher engine: prompt log-probs, asked now ...
    scores, seconds = engine.collect_score()           # ... collected later (with the engine's compute time)
    engine.request_score(sequences, prompt_lens, topk=k)   # ... with the top-k per position (VLLMEngine.score_topk)
    TorchDistTransport(engine).send(version, buckets)  # tensors over a two-rank gloo group (weight_sync/)

The engine process is started with the ``spawn`` method, so it shares nothing with the learner's process (its
own ``torch.distributed`` state included). Importing this module does not import vLLM; the child does.
A child that dies or stops answering raises a clear error here instead of hanging the learner.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from typing import Any, Sequence

import torch


from rlad_megatron.engine_api import PromptResult, SamplingSettings
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.rollout.vllm_engine import VLLMEngine
from rlad_megatron.weight_sync.buckets import Named
from rlad_megatron.weight_sync.dist_transport import (
    BucketReceiver, bucket_meta, connect_store, join_pair_group, pair_backend, pair_store, send_tensors,
)

_COMMANDS = ("generate", "generate_versioned", "score", "score_timed", "score_topk_timed", "weight_version",
             "begin_sync", "finish_sync", "bucket", "shutdown")


class EngineProcessError(RuntimeError):
    """The engine process failed (its traceback is in the message) or died."""


class RemoteVLLMEngine:
    """Client of a ``VLLMEngine`` in its own process; implements ``RolloutEngine`` plus the sync calls."""

    def __init__(self, config: VLLMEngineConfig, *, host: str = "127.0.0.1", start_timeout_s: float = 600.0,
                 call_timeout_s: float = 1800.0, gpu: int | None = None) -> None:
        """``gpu``: the node-local index of the GPU the engine process owns (its ``CUDA_VISIBLE_DEVICES``); None
        on CPU. With a GPU the weights travel over NCCL from this rank's GPU to the engine's."""
        config.validate()
        self.config = config
        self.call_timeout_s = call_timeout_s
        self.gpu = gpu
        backend = pair_backend(gpu is not None)
        ctx = mp.get_context("spawn")
        self._store = pair_store(host, timeout_s=start_timeout_s)
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_serve,
                                 args=(child_conn, config, host, self._store.port, start_timeout_s, gpu, backend),
                                 name="rlad-vllm-engine", daemon=True)
        self._proc.start()
        child_conn.close()
        self._closed = False
        self._pending: str | None = None  # "generate" / "score": a request sent and not collected yet
        self._last_generate_s = 0.0
        self._group = join_pair_group(self._store, 0, timeout_s=start_timeout_s, backend=backend)
        started = self._reply(start_timeout_s)
        self.startup_s = started["startup_s"]
        self.kv_cache_tokens: int = started["kv_cache_tokens"]
        """How many tokens the engine's KV cache holds (``VLLMEngine.kv_cache_tokens``)."""

    # RolloutEngine
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        return self._call("generate", [list(map(int, p)) for p in prompts], sampling)

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        return self._call("score", [list(map(int, s)) for s in sequences], list(map(int, prompt_lens)))

    @property
    def weight_version(self) -> int:
        return self._call("weight_version")

    @property
    def shards(self) -> int:
        return 1

    # asynchronous rollouts: one request in flight at a time, while the learner computes
    @property
    def runs_apart(self) -> bool:
        return True

    def request_generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> None:
        """Send a generate request and return at once; :meth:`collect_generate` waits for its result. Until then
        the engine process is busy and every other call is refused (the commands share one pipe)."""
        self._request("generate", ("generate_versioned", [list(map(int, p)) for p in prompts], sampling))

    @property
    def generating(self) -> bool:
        """Whether a request of :meth:`request_generate` is in flight."""
        return self._pending == "generate"

    def collect_generate(self) -> tuple[list[PromptResult], int]:
        """The results of the request in flight and the engine's weight version that sampled them."""
        results, version, seconds = self._collect("generate")
        self._last_generate_s = float(seconds)
        return results, int(version)

    @property
    def last_generate_s(self) -> float:
        """Seconds the engine process generated for the latest collected request (measured there)."""
        return self._last_generate_s

    # a teacher engine: prompt log-probs asked now, collected later (the teacher pool, rlad_megatron/pools/)
    def request_score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], topk: int = 0) -> None:
        """Send a :meth:`score` request and return at once; :meth:`collect_score` waits for its result. ``topk`` > 0:
        :meth:`VLLMEngine.score_topk`'s result instead (each sequence's scores with its top-k ids and log-probs)."""
        rows, lens = [list(map(int, s)) for s in sequences], list(map(int, prompt_lens))
        self._request("score", ("score_topk_timed", rows, lens, int(topk)) if topk else ("score_timed", rows, lens))

    def collect_score(self) -> tuple[list, float]:
        """The scores of the request in flight and the seconds the engine process computed them."""
        scores, seconds = self._collect("score")
        return scores, float(seconds)

    # colocation memory: an engine of its own keeps its GPU
    def sleep(self, level: int) -> None:
        raise EngineProcessError("an engine in its own process keeps its GPU: rollout.sleep_level needs "
                                 "rollout.placement=colocated")

    def wake_up(self, part: str) -> None:
        raise EngineProcessError("an engine in its own process never sleeps (rollout.sleep_level needs "
                                 "rollout.placement=colocated)")

    def shutdown(self) -> None:
        """Stop the engine process (gracefully, then by force after 60 s); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pending and self._proc.is_alive():  # its answer comes first on the pipe
                self._pending = None
                self._reply(60.0)
            if self._proc.is_alive():
                self._conn.send(("shutdown",))
                self._reply(60.0)
        except (EngineProcessError, OSError, EOFError):
            pass
        self._proc.join(timeout=60)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        self._conn.close()
        self._group = None

    # weight sync
    def begin_sync(self, version: int) -> None:
        self._call("begin_sync", version)

    def send_bucket(self, bucket: list[Named]) -> None:
        """Tell the engine which tensors follow, send them over the pair group, wait for the engine's load."""
        self._check_open()
        if self._pending:
            raise EngineProcessError("weight bucket sent while a generate request is in flight: collect it first")
        self._send(("bucket", bucket_meta(bucket)))
        send_tensors(self._group, bucket, peer=1)
        self._reply(self.call_timeout_s)

    def finish_sync(self, version: int) -> None:
        self._call("finish_sync", version)

    # helpers
    def _request(self, kind: str, message: tuple) -> None:
        self._check_open()
        if self._pending:
            raise EngineProcessError(f"a {self._pending} request is already in flight: collect it first")
        self._send(message)
        self._pending = kind

    def _collect(self, kind: str) -> Any:
        if self._pending != kind:
            raise EngineProcessError(f"collect_{kind}(): no {kind} request is in flight"
                                     + (f" (a {self._pending} request is)" if self._pending else ""))
        try:
            return self._reply(self.call_timeout_s)
        finally:
            self._pending = None

    def _check_open(self) -> None:
        if self._closed:
            raise EngineProcessError("this RemoteVLLMEngine was shut down")

    def _call(self, command: str, *args: Any) -> Any:
        self._check_open()
        if self._pending:
            raise EngineProcessError(f"engine call {command!r} while a {self._pending} request is in flight: "
                                     f"collect_{self._pending}() it first")
        self._send((command, *args))
        return self._reply(self.call_timeout_s)

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError as exc:  # BrokenPipeError: the engine process is gone
            raise self._died() from exc

    def _died(self) -> EngineProcessError:
        self._proc.join(timeout=5)
        return EngineProcessError(f"the vLLM engine process died (exit code {self._proc.exitcode}); the last "
                                  f"checkpoint is intact: resume with --resume")

    def _reply(self, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                raise self._died()
            if time.monotonic() > deadline:
                raise EngineProcessError(f"the vLLM engine process did not answer within {timeout_s:.0f} s")
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError) as exc:  # the engine closed its end: it died (a kill, the OOM killer, ...)
            raise self._died() from exc
        if status != "ok":
            raise EngineProcessError(f"the vLLM engine process failed:\n{value}")
        return value


def _serve(conn, config: VLLMEngineConfig, host: str, port: int, timeout_s: float, gpu: int | None = None,
           backend: str = "gloo") -> None:
    """The engine process: own its GPU, join the pair group, start the engine, then answer commands until
    shutdown."""
    device = torch.device("cpu")
    if gpu is None and config.cpu_cores:
        pin_engine_cpus(config.cpu_cores)
    if gpu is not None:  # before CUDA is initialised here: the engine's GPU becomes this process's cuda:0
        inherited = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = inherited[gpu] if inherited else str(gpu)
        os.environ["LOCAL_RANK"] = "0"
        for key in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):  # not a rank of the learner's world
            os.environ.pop(key, None)
        torch.cuda.set_device(0)
        device = torch.device("cuda", 0)
    store = connect_store(host, port, timeout_s=timeout_s)
    group = join_pair_group(store, 1, timeout_s=timeout_s, backend=backend)
    try:
        engine = VLLMEngine(config)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ok", {"startup_s": engine.startup_s, "kv_cache_tokens": engine.kv_cache_tokens}))
    receiver = BucketReceiver(device)
    while True:
        try:
            command, *args = conn.recv()
        except (EOFError, OSError):  # the learner went away
            break
        try:
            if command not in _COMMANDS:
                raise ValueError(f"unknown engine command {command!r}")
            if command == "bucket":
                engine.load_bucket(receiver.receive(group, args[0], peer=0))
                result = None
            elif command == "weight_version":
                result = engine.weight_version
            elif command == "generate_versioned":  # no sync can come between: the version is the sampling one
                result = (engine.generate(*args), engine.weight_version, engine.last_generate_s)
            elif command in ("score_timed", "score_topk_timed"):
                start = time.perf_counter()
                scores = engine.score(*args) if command == "score_timed" else engine.score_topk(*args)
                result = (scores, time.perf_counter() - start)
            elif command == "shutdown":
                engine.shutdown()
                conn.send(("ok", None))
                return
            else:
                result = getattr(engine, command)(*args)
            conn.send(("ok", result))
        except Exception:
            conn.send(("error", traceback.format_exc()))
    engine.shutdown()


def pin_engine_cpus(cores: Sequence[int]) -> None:
    """In the engine process, before vLLM starts: run on ``cores`` only, one OpenMP thread per core (vLLM's CPU
    worker binds its threads from ``VLLM_CPU_OMP_THREADS_BIND``)."""
    os.sched_setaffinity(0, set(cores))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores)
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    torch.set_num_threads(len(cores))
