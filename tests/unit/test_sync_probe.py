"""The sync probe on sampled tokens and its per-dtype tolerances (weight_sync/verify.py), with a small fake engine:
the probe scores the prompts followed by what the engine samples now (not fixed random tokens), checks mean and
max |delta log-prob| against the calibrated tolerance, and with FP8 reports instead of stopping unless asked."""
from __future__ import annotations

import pytest

from rlad_megatron.engine_api import Completion, PromptResult
from rlad_megatron.weight_sync.verify import (
    ProbeBatch, SyncVerifier, WeightSyncError, calibrated_tolerance, make_sampled_probe, probe_from_samples,
)


class _SamplingEngine:
    """Samples ``max_tokens`` tokens that depend on the seed and its weight ``w``; scores each token t as
    ``-w - 0.01 t`` (+ ``noise`` on the sampled tokens only, the kind of difference the probe must see)."""

    def __init__(self, w: float = 0.5, noise: float = 0.0):
        self.w, self.noise, self.weight_version = w, noise, 1
        self.generated: list = []

    def generate(self, prompts, sampling):
        self.generated.append((prompts, sampling))
        out = []
        for j, p in enumerate(prompts):
            ids = [(sampling.seed or 0) + int(10 * self.w) + j + i for i in range(sampling.max_tokens)]
            out.append(PromptResult(list(p), [Completion(ids, [-1.0] * len(ids), "length")]))
        return out

    def score(self, seqs, plens):
        return [[-self.w - 0.01 * t + self.noise for t in s[p:]] for s, p in zip(seqs, plens)]


def _learner(w: float, seen: list):
    def logprobs(seqs, plens):
        seen.append(([list(s) for s in seqs], list(plens)))
        return [[-w - 0.01 * t for t in s[p:]] for s, p in zip(seqs, plens)]

    return logprobs


def test_probe_scores_what_the_engine_samples_now():
    engine, seen = _SamplingEngine(), []
    probe = make_sampled_probe([[1, 2, 3], [4, 5], [6]], num_prompts=2, max_tokens=4, seed=9)
    verifier = SyncVerifier(engine, _learner(0.5, seen), probe, tolerance=calibrated_tolerance("float32", "float32"))
    stats = verifier.check(expected_version=1)
    assert stats["sync/logprob_max_abs"] == 0.0 and stats["sync/logprob_over_tolerance"] == 0.0
    (prompts, sampling), = engine.generated
    assert prompts == [[1, 2, 3], [4, 5]] and sampling.max_tokens == 4 and sampling.seed == 9
    assert sampling.temperature == 1.0 and sampling.top_p == 1.0  # raw log-probs are what both sides score
    seqs, plens = seen[0]
    assert plens == [3, 2] and seqs[0] == [1, 2, 3, 14, 15, 16, 17]  # prompt + the engine's samples
    engine.w = 0.8  # new weights sample other tokens: the next check scores those
    seen.clear()
    with pytest.raises(WeightSyncError):  # (and the learner still has w=0.5: a stale engine)
        verifier.check(expected_version=1)
    assert seen[0][0][0][3:] == [17, 18, 19, 20]


def test_recent_samples_replace_the_sampling_probe():
    """After the trainer hands over a step's samples, the check scores those (no generation on the engine) and
    still catches an engine that does not serve the learner's weights."""
    engine, seen = _SamplingEngine(), []
    verifier = SyncVerifier(engine, _learner(0.5, seen), make_sampled_probe([[1, 2, 3]], max_tokens=4),
                            tolerance=calibrated_tolerance("float32", "float32"))
    # two prompts x G=3, group-major; the first response of the second prompt is empty
    samples = probe_from_samples([[1, 2]] * 3 + [[7]] * 3, [[5, 6], [8], [9], [], [4, 4, 4], [3]], group_size=3)
    assert samples == ProbeBatch([[1, 2, 5, 6], [7, 4, 4, 4]], [2, 1])
    verifier.use_samples(samples)
    verifier.use_samples(None)  # a step without samples on this rank keeps the last ones
    stats = verifier.check(expected_version=1)
    assert stats["sync/logprob_max_abs"] == 0.0 and engine.generated == []
    assert seen == [([[1, 2, 5, 6], [7, 4, 4, 4]], [2, 1])]
    engine.w = 0.8  # the engine moved on (or never got the weights): the same samples now disagree
    with pytest.raises(WeightSyncError, match="disagree"):
        verifier.check(expected_version=1)
    assert probe_from_samples([[1], [1]], [[], []], group_size=2) is None
    assert len(probe_from_samples([[1]] * 12, [[2]] * 12, group_size=2).sequences) == 4
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        probe_from_samples([[1], [1]], [[2]], group_size=1)


def test_mean_and_max_are_both_checked():
    probe = make_sampled_probe([[1, 2]], max_tokens=3)
    tol = calibrated_tolerance("bfloat16", "bfloat16")  # mean 0.02, max 1.0
    ok = SyncVerifier(_SamplingEngine(noise=0.015), _learner(0.5, []), probe, tolerance=tol).check(1)
    assert ok["sync/logprob_mean_abs"] == pytest.approx(0.015)
    with pytest.raises(WeightSyncError, match="mean 3.000e-02 \\(tolerance 2.0e-02\\)"):
        SyncVerifier(_SamplingEngine(noise=0.03), _learner(0.5, []), probe, tolerance=tol).check(1)


def test_fp8_reports_unless_asked_to_stop():
    probe = make_sampled_probe([[1, 2]], max_tokens=3)
    report = calibrated_tolerance("bfloat16", "bfloat16", fp8=True)
    assert not report.stop
    stats = SyncVerifier(_SamplingEngine(noise=0.5), _learner(0.5, []), probe, tolerance=report).check(1)
    assert stats["sync/logprob_over_tolerance"] == 1.0
    strict = calibrated_tolerance("bfloat16", "bfloat16", fp8=True, stop_on_fp8=True)
    with pytest.raises(WeightSyncError):
        SyncVerifier(_SamplingEngine(noise=0.5), _learner(0.5, []), probe, tolerance=strict).check(1)


def test_tolerance_of_the_coarsest_side_and_overrides():
    assert calibrated_tolerance("float32", "float32").name == "float32"
    assert calibrated_tolerance("float32", "bfloat16").name == "bfloat16"
    assert calibrated_tolerance("bfloat16", "float32", fp8=True).name == "fp8"
    fp32 = calibrated_tolerance("float32", "float32")
    bf16 = calibrated_tolerance("bfloat16", "bfloat16")
    assert fp32.max_abs < bf16.max_abs and fp32.mean_abs < bf16.mean_abs
    custom = calibrated_tolerance("bfloat16", "bfloat16", max_abs=0.05)
    assert (custom.max_abs, custom.mean_abs) == (0.05, bf16.mean_abs)


def test_fixed_batches_still_work_and_bad_probes_refused():
    engine = _SamplingEngine()
    fixed = ProbeBatch([[1, 2, 3, 4]], [2])
    assert SyncVerifier(engine, _learner(0.5, []), fixed).check(1)["sync/logprob_max_abs"] == 0.0
    assert engine.generated == []
    with pytest.raises(ValueError, match="non-empty prompt"):
        make_sampled_probe([])
    assert make_sampled_probe([[1, 2, 3, 4, 5]], max_prompt_tokens=2).prompts == [[4, 5]]
