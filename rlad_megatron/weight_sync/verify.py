"""After every sync: does the engine serve exactly the learner's weights? Score a fixed probe batch with both.

A sync that left the engine on old weights (skipped, partial, or to the wrong engine) shows up twice: the engine's
reported version is not the one just synced, and the engine's log-probs of the probe tokens differ from the
learner's. Either raises :class:`WeightSyncError`, which is meant to stop the run: training on samples from the
wrong policy is silent corruption.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

LearnerLogprobs = Callable[[list[list[int]], list[int]], list[list[float]]]
"""``learner_logprobs(sequences, prompt_lens) -> per-token log-probs after each prompt`` (the learner's forward;
collective over its model-parallel group: every rank of the group calls it)."""


class WeightSyncError(RuntimeError):
    """The rollout engine does not serve the learner's weights; the run must stop."""


@dataclasses.dataclass(frozen=True)
class ProbeBatch:
    """Token sequences scored after each sync; ``sequences[i][prompt_lens[i]:]`` are the scored tokens."""

    sequences: list[list[int]]
    prompt_lens: list[int]


def make_probe_batch(
    vocab_size: int, *, num_sequences: int = 4, length: int = 32, prompt_len: int = 4, seed: int = 0
) -> ProbeBatch:
    """A fixed batch of random token ids in ``[0, vocab_size)`` (same arguments, same batch)."""
    if not 0 < prompt_len < length:
        raise ValueError(f"make_probe_batch: need 0 < prompt_len ({prompt_len}) < length ({length})")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (num_sequences, length), generator=gen)
    return ProbeBatch([row.tolist() for row in tokens], [prompt_len] * num_sequences)


def logprob_mismatch(engine_lps: Sequence[Sequence[float]], learner_lps: Sequence[Sequence[float]]) -> dict[str, float]:
    """``{"max_abs": ..., "mean_abs": ...}`` of the per-token difference (ragged lists of equal shape)."""
    if len(engine_lps) != len(learner_lps) or any(len(a) != len(b) for a, b in zip(engine_lps, learner_lps)):
        raise ValueError("logprob_mismatch: engine and learner log-probs have different shapes")
    diff = torch.cat([torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
                      for a, b in zip(engine_lps, learner_lps)]).abs()
    if diff.numel() == 0:
        raise ValueError("logprob_mismatch: no tokens to compare")
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


class SyncVerifier:
    """Compare engine and learner log-probs on ``probe`` and check the engine's weight version.

    Args:
        engine: the rollout engine on this rank, or None on ranks without one (they still call :meth:`check`,
            because ``learner_logprobs`` is a collective forward).
        learner_logprobs: see :data:`LearnerLogprobs`.
        probe: the fixed probe batch.
        max_abs_tol: largest allowed per-token |engine - learner| log-prob difference. fp32 engines match to
            ~1e-5 (1e-4 is a safe bound); bf16 engines to ~1e-2.
    """

    def __init__(self, engine, learner_logprobs: LearnerLogprobs, probe: ProbeBatch, *, max_abs_tol: float = 1e-4):
        if not max_abs_tol > 0:
            raise ValueError(f"SyncVerifier: max_abs_tol must be positive, got {max_abs_tol}")
        self.engine = engine
        self.learner_logprobs = learner_logprobs
        self.probe = probe
        self.max_abs_tol = max_abs_tol

    def measure(self) -> dict[str, float] | None:
        """Mismatch metrics on the engine rank (None elsewhere); no checks. Collective like :meth:`check`."""
        learner = self.learner_logprobs(self.probe.sequences, self.probe.prompt_lens)
        if self.engine is None:
            return None
        engine = self.engine.score(self.probe.sequences, self.probe.prompt_lens)
        return logprob_mismatch(engine, learner)

    def check(self, expected_version: int) -> dict[str, float] | None:
        """Raise :class:`WeightSyncError` unless the engine serves ``expected_version`` and matches the learner.

        Returns ``{"sync/logprob_max_abs": ..., "sync/logprob_mean_abs": ..., "sync/version": ...}`` on the
        engine rank, None elsewhere. The error is raised on the engine rank only; :class:`WeightSynchronizer`
        shares the outcome with the rest of the model-parallel group so that every rank stops.
        """
        stats = self.measure()
        if self.engine is None:
            return None
        served = self.engine.weight_version
        if served != expected_version:
            raise WeightSyncError(
                f"stale rollout weights: the engine serves weight version {served}, the learner synced "
                f"{expected_version}; the sync did not reach the engine"
            )
        if not stats["max_abs"] <= self.max_abs_tol:  # also catches NaN
            raise WeightSyncError(
                f"rollout engine and learner disagree after sync {expected_version}: max |log-prob diff| = "
                f"{stats['max_abs']:.3e} (mean {stats['mean_abs']:.3e}) > tolerance {self.max_abs_tol:.1e} on the "
                "probe batch; the engine is not serving the learner's weights (stale, partial or mis-mapped sync)"
            )
        return {"sync/logprob_max_abs": stats["max_abs"], "sync/logprob_mean_abs": stats["mean_abs"],
                "sync/version": float(served)}
