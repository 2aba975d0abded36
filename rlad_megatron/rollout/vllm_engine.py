"""The vLLM rollout engine (in-process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and the vLLM teacher scorer.

This, ``vllm_env.py`` (process groups, CPU GEMMs and machine-dependent settings) and ``vllm_worker_ext.py`` are
the only modules that import vLLM.

    engine = VLLMEngine(VLLMEngineConfig(model=hf_dir))
    results = engine.generate([[1, 5, 7]], SamplingSettings(n=4, temperature=0.6, top_p=0.95, max_tokens=32))
    engine.begin_sync(1); engine.load_bucket(named_tensors); engine.finish_sync(1)   # see weight_sync/

Sampled-token log-probs are vLLM's ``processed_logprobs``: the log-prob under the distribution the token was
actually drawn from (after temperature and top-p; a token outside the nucleus has probability 0). With
temperature 1 and top-p 1 that equals the model's raw log-prob. Prompt log-probs (``score``) are always raw
(temperature 1, no truncation), which is what the learner computes.

Process-group isolation: vLLM's worker sets up its own ``torch.distributed`` world (size 1) and, if the learner's
default group already exists, would build its groups over the learner's whole world (a collective that ranks
without an engine never join), and its teardown would destroy every group of the process. So the engine is built
and shut down with the learner's default group hidden (``_private_default_group``,
``_shutdown_without_default_group``); vLLM's own groups all have one member and never communicate.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import weakref
from typing import Iterable, Sequence

import torch

from rlad_megatron.engine_api import Completion, PromptResult, SamplingSettings
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.device import engine_call_guard
from rlad_megatron.rollout.seeds import engine_request_seed
from rlad_megatron.rollout.vllm_env import (  # noqa: F401  (_check_gpu_only_settings: tested from here)
    _batched_token_budget, _check_gpu_only_settings, _cumem_pools_kept, _kv_cache_bytes,
    _learner_keeps_thread_control, _plain_cpu_gemm, _private_default_group, _shutdown_without_default_group,
    _unlink_external_launcher_cpu_shm,
)

_EXT = "rlad_megatron.rollout.vllm_worker_ext.RladWorkerExtension"

#: The engines of this process that allocate through vLLM's CuMem pools (sleep mode), until they shut down.
_SLEEP_MODE_ENGINES: "weakref.WeakSet[VLLMEngine]" = weakref.WeakSet()


class VLLMEngine:
    """An in-process vLLM engine implementing :class:`rlad_megatron.engine_api.RolloutEngine`."""

    def __init__(self, config: VLLMEngineConfig) -> None:
        config.validate()
        self.config = config
        _check_gpu_only_settings(config)
        # In-process engine: the worker's model is reachable and RPC arguments travel by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(config.reserved_cpus)
        from vllm import LLM  # lazy: vLLM only where an engine runs

        self._dist_state: dict = {}
        self.sharded = config.executor == "external_launcher"
        # "uni": vLLM sets up a one-rank world of its own, with the learner's group hidden. "external_launcher":
        # vLLM builds its groups over the learner's world (every rank builds its engine now).
        groups = contextlib.nullcontext() if self.sharded else _private_default_group(self._dist_state)
        kwargs = {}
        if config.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if config.max_logprobs is not None:
            kwargs["max_logprobs"] = config.max_logprobs
        if self.sharded:
            kwargs.update(distributed_executor_backend="external_launcher",
                          tensor_parallel_size=config.tensor_parallel_size)
        if self.sharded:
            _unlink_external_launcher_cpu_shm()
        start = time.perf_counter()
        with engine_call_guard("building the vLLM engine"), groups, _learner_keeps_thread_control(), \
                _plain_cpu_gemm(config.weight_load == "inplace"):
            self._llm = LLM(
                model=config.model,
                dtype=config.dtype,
                seed=config.seed,
                max_model_len=config.max_model_len,
                max_num_seqs=config.max_num_seqs,
                max_num_batched_tokens=_batched_token_budget(config),
                enforce_eager=config.resolved_enforce_eager(),
                kv_cache_memory_bytes=_kv_cache_bytes(config),
                quantization=config.quantization,
                logprobs_mode="processed_logprobs",
                worker_extension_cls=_EXT,
                **kwargs,
            )
        self.startup_s = time.perf_counter() - start
        if config.enable_sleep_mode:
            _SLEEP_MODE_ENGINES.add(self)
        self._closed = False
        self._asleep = False
        # A sharded engine seeds every request (its shards must draw the same samples: rollout/seeds.py).
        self._seeds_every_request = self.sharded and config.tensor_parallel_size > 1
        self._unseeded_calls = 0
        self._sync_in_progress: int | None = None
        self._held: tuple[list[PromptResult], int] | None = None  # request_generate's samples, until collected
        self._last_generate_s = 0.0
        if config.weight_load == "inplace":
            report = self._rpc("rlad_linear_weight_report")
            if report["packed"]:
                raise RuntimeError(
                    f"weight_load='inplace' needs plain torch weights in every linear layer, but {report['packed']} "
                    f"of {report['plain'] + report['packed']} were pre-packed by vLLM (this vLLM release changed its "
                    "CPU GEMM dispatch); set rollout.weight_load=vllm_reload (eval: --engine-option "
                    "weight_load=vllm_reload)"
                )

    # ------------------------------------------------------------------ RolloutEngine
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        """Sample ``sampling.n`` responses per prompt (token-id lists). With a seed, prompt j's i-th response uses
        seed ``seed + j * n + i`` (distinct streams, reproducible). An engine sharded over tensor-parallel ranks
        seeds unseeded requests itself, alike on its shards (``rollout.seeds.engine_request_seed``)."""
        from vllm import SamplingParams  # lazy: vLLM only where an engine runs

        self._check_open()
        self._check_awake("generate")
        self._check_lengths(prompts, sampling.max_tokens)
        if sampling.seed is None and self._seeds_every_request:
            sampling = dataclasses.replace(sampling, seed=engine_request_seed(self.config.seed, self._unseeded_calls))
            self._unseeded_calls += 1
        params = []
        for j in range(len(prompts)):
            params.append(
                SamplingParams(
                    n=sampling.n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    stop_token_ids=list(sampling.stop_token_ids),
                    seed=None if sampling.seed is None else sampling.seed + j * sampling.n,
                    logprobs=0,
                )
            )
        start = time.perf_counter()
        outputs = self._engine_generate([{"prompt_token_ids": list(map(int, p))} for p in prompts], params)
        self._last_generate_s = time.perf_counter() - start
        results = []
        for prompt, out in zip(prompts, outputs):
            completions = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [float(step[tok].logprob) for tok, step in zip(ids, c.logprobs)]
                completions.append(Completion(ids, lps, _finish_reason(c.finish_reason), c.text or ""))
            results.append(PromptResult(list(map(int, prompt)), completions))
        return results

    def _check_score_inputs(self, call: str, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> None:
        """What a scoring call needs: an open, awake engine and a prompt length inside each sequence."""
        self._check_open()
        self._check_awake("score")
        if len(sequences) != len(prompt_lens):
            raise ValueError(f"{call}: {len(sequences)} sequences but {len(prompt_lens)} prompt_lens")
        for i, (seq, p) in enumerate(zip(sequences, prompt_lens)):
            if not 1 <= p <= len(seq):
                raise ValueError(f"{call}: prompt_lens[{i}]={p} must be in [1, len(sequence)={len(seq)}]")
        self._check_lengths(sequences, 1)

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        """Raw log-prob of each token after its prompt: ``out[i][t] = log p(seq_i[p_i + t] | seq_i[:p_i + t])``,
        length ``len(seq_i) - p_i``, under the engine's current weights (vLLM prompt log-probs)."""
        from vllm import SamplingParams  # lazy: vLLM only where an engine runs

        self._check_score_inputs("score", sequences, prompt_lens)
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, logprobs=None)
        outputs = self._engine_generate([{"prompt_token_ids": list(map(int, s))} for s in sequences], params)
        scores = []
        for seq, p, out in zip(sequences, prompt_lens, outputs):
            plps = out.prompt_logprobs  # entry t: dict token -> Logprob for position t (entry 0 is None)
            scores.append([float(plps[t][int(seq[t])].logprob) for t in range(p, len(seq))])
        return scores

    def score_topk(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int],
                   k: int) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
        """As :meth:`score`, and at every scored position the ``k`` most likely tokens: per sequence ``(log-probs of
        its tokens [n], top-k ids [n][k], top-k log-probs [n][k])``, sorted by decreasing probability
        (:func:`topk_of_position`; vLLM prompt log-probs with ``prompt_logprobs=k``, which needs the engine's
        ``max_logprobs >= k``)."""
        from vllm import SamplingParams  # lazy: vLLM only where an engine runs

        self._check_score_inputs("score_topk", sequences, prompt_lens)
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=k, logprobs=None)
        outputs = self._engine_generate([{"prompt_token_ids": list(map(int, s))} for s in sequences], params)
        out = []
        for seq, p, o in zip(sequences, prompt_lens, outputs):
            plps = o.prompt_logprobs  # entry t: dict token -> Logprob for position t (entry 0 is None)
            tokens = [float(plps[t][int(seq[t])].logprob) for t in range(p, len(seq))]
            best = [topk_of_position({tok: (lp.logprob, lp.rank) for tok, lp in plps[t].items()}, k)
                    for t in range(p, len(seq))]
            out.append((tokens, [b[0] for b in best], [b[1] for b in best]))
        return out

    @property
    def kv_cache_tokens(self) -> int:
        """How many tokens the engine's KV cache holds (vLLM's ``num_gpu_blocks * block_size``; on a GPU vLLM sized
        it from ``gpu_memory_utilization``, on CPU from ``kv_cache_bytes``)."""
        cache = self._llm.llm_engine.vllm_config.cache_config
        return int(cache.num_gpu_blocks or 0) * int(cache.block_size)

    @property
    def weight_version(self) -> int:
        """The version of the weights the engine serves (0: as loaded from ``config.model``)."""
        self._check_open()
        return int(self._rpc("rlad_version"))

    @property
    def shards(self) -> int:
        return self.config.tensor_parallel_size if self.sharded else 1

    # in the caller's process: a request is served at once and held until collected
    @property
    def runs_apart(self) -> bool:
        return False

    def request_generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> None:
        if self._held is not None:
            raise RuntimeError("a generate request is already held: collect_generate() it first")
        self._held = (self.generate(prompts, sampling), self.weight_version)

    def collect_generate(self) -> tuple[list[PromptResult], int]:
        if self._held is None:
            raise RuntimeError("collect_generate(): no generate request was made")
        held, self._held = self._held, None
        return held

    @property
    def last_generate_s(self) -> float:
        return self._last_generate_s

    def shutdown(self) -> None:
        """Stop the engine; safe to call twice. Leaves the learner's process groups untouched."""
        if self._closed:
            return
        self._closed = True

        _SLEEP_MODE_ENGINES.discard(self)
        with engine_call_guard("shutting the vLLM engine down"), _cumem_pools_kept(len(_SLEEP_MODE_ENGINES) > 0):
            _shutdown_without_default_group(self._llm, self._dist_state.pop("vllm_pg", None))
        del self._llm
        if self.sharded:
            _unlink_external_launcher_cpu_shm()

    # ------------------------------------------------------------------ colocation memory (GPU)
    def sleep(self, level: int) -> None:
        """Release the engine's GPU memory while the learner trains: level 1 moves the weights to host memory and
        drops the KV cache; level 2 drops both (the next weight sync rewrites every parameter). Needs
        ``enable_sleep_mode``; collective over the engine's shards."""
        self._check_open()
        if not self.config.enable_sleep_mode:
            raise RuntimeError("VLLMEngine.sleep needs an engine built with enable_sleep_mode=True "
                               "(rollout.sleep_level > 0)")
        if level not in (1, 2):
            raise ValueError(f"VLLMEngine.sleep: level must be 1 or 2, got {level}")
        if self._asleep:
            return

        with engine_call_guard("VLLMEngine.sleep"):
            self._llm.sleep(level=level)
        self._asleep = True

    def wake_up(self, part: str) -> None:
        """Re-allocate ``part`` of a sleeping engine: "weights" before a weight sync, "kv_cache" before generation
        (the KV cache comes back last, after the learner's activations are freed)."""
        if part not in ("weights", "kv_cache"):
            raise ValueError(f"VLLMEngine.wake_up: part must be 'weights' or 'kv_cache', got {part!r}")
        self._check_open()
        if not self._asleep:
            return

        with engine_call_guard(f"VLLMEngine.wake_up({part})"):
            awake = self._llm.wake_up(tags=[part])
        if part == "kv_cache" or awake:
            self._asleep = False  # weights are woken before every sync, so the KV cache is the last part back

    @property
    def asleep(self) -> bool:
        return self._asleep

    # ------------------------------------------------------------------ weight sync (engine side)
    def begin_sync(self, version: int) -> None:
        """Start receiving version ``version``. Generation must not run until :meth:`finish_sync`."""
        self._check_open()
        if version <= self.weight_version:
            raise ValueError(f"sync version {version} must be above the served version {self.weight_version}")
        self._sync_in_progress = version
        if self.config.weight_load == "inplace":
            self._rpc("rlad_begin_sync", version)

    def load_bucket(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Copy one bucket of HF-named full tensors into the engine's parameters (``weight_load='inplace'``)."""
        if self._sync_in_progress is None:
            raise RuntimeError("load_bucket outside a sync: call begin_sync(version) first")
        if self.config.weight_load != "inplace":
            raise RuntimeError("load_bucket needs weight_load='inplace'; with 'vllm_reload' use reload_all")
        self._rpc("rlad_load", named)

    def reload_all(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """vLLM's layerwise ``reload_weights`` over a stream of every HF tensor (``weight_load='vllm_reload'``)."""
        if self._sync_in_progress is None:
            raise RuntimeError("reload_all outside a sync: call begin_sync(version) first")
        self._rpc("rlad_reload", named, self._sync_in_progress)

    def finish_sync(self, version: int) -> None:
        """Check the sync covered every parameter, record ``version`` and drop KV blocks of the old weights."""
        if self._sync_in_progress != version:
            raise RuntimeError(f"finish_sync({version}) does not match the sync in progress ({self._sync_in_progress})")
        self._sync_in_progress = None
        if self.config.weight_load == "inplace":
            self._rpc("rlad_finish_sync", version)
        self._llm.reset_prefix_cache()

    # ------------------------------------------------------------------ helpers
    def _rpc(self, method: str, *args):
        with engine_call_guard(f"the engine call {method}"):
            return self._llm.collective_rpc(method, args=args)[0]

    def _engine_generate(self, prompts: list[dict], params):
        with engine_call_guard("VLLMEngine.generate"):
            return self._llm.generate(prompts, params, use_tqdm=False)

    def _check_awake(self, what: str) -> None:
        if self._asleep:
            raise RuntimeError(f"VLLMEngine.{what} on a sleeping engine: call wake_up('weights') and "
                               "wake_up('kv_cache') first")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this VLLMEngine was shut down")
        if self._sync_in_progress is not None:
            raise RuntimeError(
                f"weight sync {self._sync_in_progress} is in progress (begin_sync without finish_sync): the engine "
                "holds a mix of old and new weights and must not generate or score"
            )

    def _check_lengths(self, seqs: Sequence[Sequence[int]], new_tokens: int) -> None:
        for i, s in enumerate(seqs):
            if len(s) == 0:
                raise ValueError(f"sequence {i} is empty")
            if len(s) + new_tokens > self.config.max_model_len:
                raise ValueError(
                    f"sequence {i} has {len(s)} tokens + {new_tokens} new > max_model_len="
                    f"{self.config.max_model_len} (the engine's length: data.max_prompt_tokens + "
                    "rollout.max_new_tokens; eval: --engine-option max_model_len): raise it or shorten the sequence"
                )


def _finish_reason(reason: str | None) -> str:
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"vLLM returned finish_reason={reason!r} for a finished request (expected stop or length)")


def topk_of_position(entries: dict[int, tuple[float, int]], k: int) -> tuple[list[int], list[float]]:
    """``(ids, log-probs)`` of the ``k`` most likely tokens of one position from vLLM's prompt log-probs
    ``{token: (logprob, rank)}``: vLLM returns the top-k and the prompt's own token (``k`` or ``k + 1`` entries);
    the ``k`` of lowest rank (1 = most likely), ties by log-prob then id, in decreasing probability as
    ``rlad_megatron.logprobs.vocab_parallel_topk`` returns them."""
    if len(entries) < k:
        raise ValueError(f"vLLM returned {len(entries)} prompt log-probs for a position, fewer than k={k}")
    best = sorted(entries.items(), key=lambda e: (e[1][1], -e[1][0], e[0]))[:k]
    return [int(tok) for tok, _ in best], [float(lp) for _, (lp, _) in best]


class VLLMTeacherScorer:
    """The teacher's log-prob of each sampled student token, from a vLLM engine serving the teacher.

    ``score(sequences, prompt_lens)`` -> ``list[list[float]]``, one raw log-prob per response token (the TRRD
    ``t_lp``). The engine never receives weight syncs, so vLLM's pre-packed GEMMs are kept (``weight_load`` is
    forced to "vllm_reload", which only matters if someone syncs it).
    """

    def __init__(self, config: VLLMEngineConfig) -> None:
        self.engine = VLLMEngine(dataclasses.replace(config, weight_load="vllm_reload"))

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        return self.engine.score(sequences, prompt_lens)

    def score_topk(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int],
                   k: int) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
        return self.engine.score_topk(sequences, prompt_lens, k)

    def shutdown(self) -> None:
        self.engine.shutdown()
