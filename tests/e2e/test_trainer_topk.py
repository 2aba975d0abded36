"""The teacher's top-k distribution through the real trainer (``loss.topk_kl``; docs/teacher_signals.md): the colocated
Megatron teacher's top-k ids and log-probs per response position travel with the batch, the student's log-probs at
those ids come from the same pass as its sampled tokens' (K more targets), and the top-k KL trains the student, as
RLAD's auxiliary term (packed micro-batches, fused head) and as KDRL's penalty (logits path). The runs are the
session's layout runs ``topk_rlad`` / ``topk_kdrl`` (tests/e2e/layout_runs.py)."""
from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("name", ["topk_rlad", "topk_kdrl"])
def test_topk_kl_trains_the_student(layout_runs, name) -> None:
    metrics = layout_runs[name].metrics
    assert len(metrics) == 2
    for m in metrics:
        kl, teacher_mass, student_mass = m["loss/topk/kl"], m["loss/topk/teacher_mass"], m["loss/topk/student_mass"]
        assert all(math.isfinite(v) for v in (kl, teacher_mass, student_mass, m["loss/loss"], m["optim/grad_norm"]))
        assert kl > 0  # the student's distribution is not the teacher's (different models)
        assert 0 < teacher_mass <= 1 + 1e-6 and 0 < student_mass <= 1 + 1e-6
        assert m["optim/applied_updates"] > 0 and m["optim/skipped_updates"] == 0
        assert m["time/teacher"] > 0
    if name == "topk_kdrl":  # the penalty is the top-k KL (its schedule's beta times it), not a sampled-token estimate
        assert all(m["loss/kd/beta"] > 0 and m["loss/kd/kl"] > 0 for m in metrics)


def test_topk_term_changes_the_update(layout_runs) -> None:
    """The same first batch as tp1 (same seeds and weights): the RLAD terms agree, the top-k term adds to the loss."""
    base, topk = layout_runs["tp1"].metrics[0], layout_runs["topk_rlad"].metrics[0]
    for key in ("reward/mean", "response/length_mean"):
        assert topk[key] == base[key], key
    assert "loss/topk/kl" not in base
    assert topk["loss/loss"] != pytest.approx(base["loss/loss"], rel=1e-6)
