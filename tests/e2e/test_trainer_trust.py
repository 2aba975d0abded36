"""Teacher trust gated by the verifier, end to end (loss.teacher_trust=gate): the training file's per-prompt
``teacher_pass_rate`` reaches the loss through the trainer's batch. Every prompt of the rated file is in every step
(tests/e2e/layout_runs.py, ``rows``), so the gated fraction is known from the data; with every prompt gated, RLAD
is GRPO step for step. The runs are the session's layout runs (warm-started tiny models, one process each)."""
from __future__ import annotations

import pytest

from layout_runs import GATED, RATED_PROMPTS
from rlad_megatron.trainer.observability.metrics_file import is_clock_metric

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_gated_fraction_is_the_fraction_of_failed_prompts(layout_runs) -> None:
    metrics = layout_runs["teachers_trust"].metrics  # (with two teachers: the trust weight is the pass rate's)
    assert len(metrics) == 2
    for m in metrics:
        # no group skipped, every prompt once per step: a response of each gated prompt, G of each
        assert m["groups/kept_sequences"] == RATED_PROMPTS * 8
        assert m["loss/trust/gated_frac"] == pytest.approx(GATED / RATED_PROMPTS, abs=1e-9)
        assert m["loss/trust/pass_rate"] == pytest.approx(1 - GATED / RATED_PROMPTS, abs=1e-9)
        assert m["loss/trust/weight"] == pytest.approx(1 - GATED / RATED_PROMPTS, abs=1e-9)
        assert m["loss/kl/teacher_k3"] > 0  # the teacher still scores (its term acts on the trusted prompts)


def test_every_prompt_gated_trains_as_grpo(layout_runs) -> None:
    gated, grpo = layout_runs["trust_all_gated"].metrics, layout_runs["grpo_rated"].metrics
    assert len(gated) == len(grpo) == 2
    for step, (got, ref) in enumerate(zip(gated, grpo), start=1):
        assert got["loss/trust/gated_frac"] == 1.0
        keys = sorted(k for k in ref if k in got and not is_clock_metric(k) and isinstance(ref[k], float)
                      and not k.startswith(("memory/", "rollout/weight_sync")))
        assert {"loss/loss", "loss/pg_loss", "optim/grad_norm", "reward/mean"} <= set(keys), keys
        assert ref["optim/applied_updates"] > 0  # real updates were compared
        for key in keys:
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-6), f"step {step} {key}"
