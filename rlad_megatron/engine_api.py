"""The rollout-engine interface: what the trainer and the evaluator need from a generator.

One implementation per file (``vllm_engine.py`` is the real one). Everything here is plain Python/torch so that
``import rlad_megatron`` never imports vLLM.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol, Sequence, runtime_checkable


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How to sample. ``n`` is the group size G (responses per prompt)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclasses.dataclass
class Completion:
    """One sampled response.

    token_ids: the response's token ids (prompt excluded), including the final eos/stop token when one was produced.
    logprobs: the engine's log-prob of each sampled token, same length as ``token_ids``.
    finish_reason: "stop" (eos or a stop token) or "length" (hit ``max_tokens``: the response is truncated).
    text: the decoded response.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str = ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclasses.dataclass
class PromptResult:
    """All ``n`` completions for one prompt, with the prompt's token ids as the engine tokenized them."""

    prompt_token_ids: list[int]
    completions: list[Completion]


@runtime_checkable
class RolloutEngine(Protocol):
    """A generator of student samples that can receive new weights: every call the trainer, the evaluator and the
    weight synchronizer make on an engine (no caller looks for a method with ``hasattr``).

    ``generate`` takes prompts as token-id lists (the trainer tokenizes once, so learner and engine agree on ids).
    The weight-sync calls (``begin_sync``, buckets, ``finish_sync``) go through a transport of ``weight_sync/``.
    """

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        ...

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        """Log-prob of every token after the prompt, under the engine's current weights (prompt log-probs)."""
        ...

    @property
    def weight_version(self) -> int:
        ...

    @property
    def config(self) -> Any:
        """The engine's settings (a ``VLLMEngineConfig``: model folder, dtype, tensor parallelism, ...)."""
        ...

    @property
    def kv_cache_tokens(self) -> int:
        """How many tokens the engine's KV cache holds (the trainer reports it and what sized it)."""
        ...

    @property
    def shards(self) -> int:
        """How many ranks hold one shard each of this engine and call it together (the external launcher's tensor
        parallelism; 1: one whole engine)."""
        ...

    # asynchronous generation: ask now, collect later
    @property
    def runs_apart(self) -> bool:
        """Whether the engine computes in a process of its own, so that the caller computes while a
        :meth:`request_generate` is served (the disaggregated engine). False: the request is served at once, in the
        caller's process, and :meth:`collect_generate` only hands the result over."""
        ...

    def request_generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> None:
        """Ask for :meth:`generate`'s samples; one request may be in flight, and no other call until it is
        collected."""
        ...

    def collect_generate(self) -> tuple[list[PromptResult], int]:
        """The samples of the request in flight and the weight version that sampled them."""
        ...

    @property
    def last_generate_s(self) -> float:
        """Seconds the engine computed on its latest generation (the step timeline's rollout busy time)."""
        ...

    # colocation memory (GPU)
    def sleep(self, level: int) -> None:
        """Release the engine's GPU memory while the learner computes (level 1: weights to host, KV cache freed;
        2: both freed)."""
        ...

    def wake_up(self, part: str) -> None:
        """Bring back ``part`` ("weights" before a weight sync, "kv_cache" before generation)."""
        ...

    def shutdown(self) -> None:
        ...
