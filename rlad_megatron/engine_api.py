"""The rollout-engine interface: what the trainer and the evaluator need from a generator.

One implementation per file (``vllm_engine.py`` is the real one). Everything here is plain Python/torch so that
``import rlad_megatron`` never imports vLLM.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence, runtime_checkable


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
    """A generator of student samples that can receive new weights.

    ``generate`` takes prompts as token-id lists (the trainer tokenizes once, so learner and engine agree on ids).
    """

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        ...

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        """Log-prob of every token after the prompt, under the engine's current weights (prompt log-probs)."""
        ...

    @property
    def weight_version(self) -> int:
        ...

    def shutdown(self) -> None:
        ...
