"""The teacher's top-k distribution through the real trainer (``loss.topk_kl``; docs/teacher_signals.md): the Megatron
teacher's top-k ids and log-probs per response position travel with the batch, the student's log-probs at those ids
come from the same pass as its sampled tokens' (K more targets), and the top-k KL trains the student, as RLAD's
auxiliary term (packed micro-batches, fused head) and as KDRL's penalty (logits path). With the teacher on a rank of
its own (``teacher.placement=separate``) the pool's replies carry the top-k and the run equals the colocated one;
with a vLLM teacher (prompt log-probs) the first step equals the Megatron teacher's up to the two engines' rounding,
and a vLLM teacher engine process of its own equals the colocated vLLM teacher. The runs are the session's layout
runs ``topk_rlad`` / ``topk_pool`` / ``topk_vllm`` / ``topk_pool_vllm`` / ``topk_kdrl`` (tests/e2e/layout_runs.py)."""
from __future__ import annotations

import math

import pytest

from rlad_megatron.trainer.observability.metrics_file import is_clock_metric

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("name", ["topk_rlad", "topk_pool", "topk_kdrl"])
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
        assert all(m["loss/kd/beta"] > 0 and m["loss/kd/kl"] == m["loss/topk/kl"] for m in metrics)


@pytest.mark.parametrize("pooled,colocated,steps", [("topk_pool", "topk_rlad", 2), ("topk_pool_vllm", "topk_vllm", 1)])
def test_teacher_pool_topk_gives_the_colocated_results(layout_runs, pooled, colocated, steps) -> None:
    """A teacher pool's top-k replies (a Megatron teacher rank; a vLLM teacher engine process) train exactly as the
    same teacher's top-k in the learner's process: every metric of the first steps within 1e-6 (fp32)."""
    for step in range(steps):
        ref, got = layout_runs[colocated].metrics[step], layout_runs[pooled].metrics[step]
        keys = sorted(k for k in ref if k in got and not is_clock_metric(k) and isinstance(ref[k], float))
        assert "loss/topk/kl" in keys and "loss/topk/teacher_mass" in keys and len(keys) > 20, keys
        for key in keys:
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-6), f"step {step + 1} {key}"
        assert got["timeline/teacher_busy"] > 0


def test_topk_term_changes_the_update(layout_runs) -> None:
    """The same first batch as tp1 (same seeds and weights): the same samples, and the top-k term adds to the loss."""
    base, topk = layout_runs["tp1"].metrics[0], layout_runs["topk_rlad"].metrics[0]
    for key in ("reward/mean", "response/length_mean"):
        assert topk[key] == base[key], key
    assert "loss/topk/kl" not in base
    assert topk["loss/loss"] != pytest.approx(base["loss/loss"], rel=1e-6)


def test_vllm_teacher_topk_matches_the_megatron_teachers(layout_runs) -> None:
    """Same seeds and weights: the same samples; the top-k terms agree up to the engines' float rounding (fp32)."""
    megatron, vllm = layout_runs["topk_rlad"].metrics[0], layout_runs["topk_vllm"].metrics[0]
    for key in ("reward/mean", "response/length_mean"):
        assert vllm[key] == megatron[key], key
    for key in ("loss/topk/kl", "loss/topk/teacher_mass", "loss/topk/student_mass", "loss/kl/teacher_k3",
                "loss/loss", "optim/grad_norm"):
        assert vllm[key] == pytest.approx(megatron[key], rel=1e-3, abs=1e-5), key
