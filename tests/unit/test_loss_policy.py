"""compute_policy_loss: composition per algorithm, split invariance of loss, gradient and metrics; LossConfig."""

from __future__ import annotations

import math

import pytest
import torch

from rlad_megatron.loss import (
    Denominators,
    LossConfig,
    MetricAccumulator,
    compute_policy_loss,
    grpo_token_loss,
    kl_estimate,
    local_denominators,
    required_inputs,
    trrd_token_loss,
)


def _batch(b=6, t=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    return {
        "logprobs": lp,
        "old_logprobs": lp + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64),
        "teacher_logprobs": lp + 1.5 * torch.randn(b, t, generator=gen, dtype=torch.float64),
        "ref_logprobs": lp + 0.2 * torch.randn(b, t, generator=gen, dtype=torch.float64),
        "advantages": torch.randn(b, 1, generator=gen, dtype=torch.float64),
        "entropy": torch.rand(b, t, generator=gen, dtype=torch.float64) * 2,
        "correct": torch.rand(b, generator=gen) > 0.5,
        "mask": torch.rand(b, t, generator=gen) > 0.25,
    }


def _masked_seq_mean(per_token, mask):
    rows = [(v[m].sum() / m.sum()) for v, m in zip(per_token, mask) if m.any()]
    return torch.stack(rows).mean()


def _masked_token_mean(per_token, mask):
    return per_token[mask].sum() / mask.sum()


def _run(cfg, data, progress=0.0):
    lp = data["logprobs"].clone().requires_grad_()
    ent = data["entropy"].clone().requires_grad_()
    inputs = {k: v for k, v in data.items() if k not in ("logprobs", "entropy", "mask")}
    loss, metrics = compute_policy_loss(cfg, logprobs=lp, entropy=ent, mask=data["mask"],
                                        denominators=local_denominators(data["mask"]), progress=progress, **inputs)
    loss.backward()
    return loss, metrics, lp.grad, ent.grad


def _expected(per_token_fn, reduce, data):
    lp = data["logprobs"].clone().requires_grad_()
    ent = data["entropy"].clone().requires_grad_()
    value = reduce(per_token_fn(lp, ent), data["mask"])
    value.backward()
    return value, lp.grad, ent.grad


def _check(got, want):
    loss, _, g_lp, g_ent = got
    value, w_lp, w_ent = want
    assert loss.item() == pytest.approx(value.item(), rel=1e-12, abs=1e-14)
    assert torch.allclose(g_lp, w_lp, rtol=1e-12, atol=1e-15)
    if g_ent is None:  # entropy only fed the metric: no gradient reaches it
        assert torch.all(w_ent == 0)
    else:
        assert torch.allclose(g_ent, w_ent, rtol=1e-12, atol=1e-15)


def test_rlad_is_trrd_with_seq_mean_token_mean():
    d = _batch()
    cfg = LossConfig(algorithm="rlad", alpha=0.4)

    def per_token(lp, ent):
        return trrd_token_loss(lp, d["old_logprobs"], d["teacher_logprobs"], d["advantages"], alpha=0.4,
                               eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0) + 0 * ent

    got = _run(cfg, d)
    _check(got, _expected(per_token, _masked_seq_mean, d))
    metrics = MetricAccumulator()
    metrics.add(got[1])
    out = metrics.finalize()
    m = d["mask"]
    diff = (d["logprobs"] - d["teacher_logprobs"]).abs() > 1.0
    assert out["teacher/clamp_frac"] == pytest.approx(diff[m].double().mean().item())
    assert out["entropy"] == pytest.approx(d["entropy"][m].mean().item())
    assert out["tokens"] == m.sum().item()


def test_grpo_with_ref_kl_entropy_and_dual_clip_token_mean():
    d = _batch(seed=1)
    cfg = LossConfig(algorithm="grpo", kl_beta=0.1, kl_estimator="k2", entropy_coef=0.01, dual_clip_c=3.0,
                     aggregation="token-mean")
    assert required_inputs(cfg) == {"old_logprobs", "advantages", "ref_logprobs", "entropy"}

    def per_token(lp, ent):
        pg = grpo_token_loss(lp, d["old_logprobs"], d["advantages"], eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
        return pg + 0.1 * kl_estimate(lp, d["ref_logprobs"], "k2") - 0.01 * ent

    _check(_run(cfg, d), _expected(per_token, _masked_token_mean, d))


@pytest.mark.parametrize("skip_correct", [False, True])
def test_kdrl_beta_schedule_and_skip_on_correct(skip_correct):
    d = _batch(seed=2)
    cfg = LossConfig(algorithm="kdrl", kd_beta=5e-3, kd_beta_final=1e-3, kd_estimator="k3",
                     kd_skip_correct=skip_correct)
    beta = 5e-3 + (1e-3 - 5e-3) * 0.25
    assert cfg.kd_beta_at(0.25) == pytest.approx(beta)
    keep = (~d["correct"]).unsqueeze(-1).double() if skip_correct else 1.0

    def per_token(lp, ent):
        pg = grpo_token_loss(lp, d["old_logprobs"], d["advantages"], eps_low=0.2, eps_high=0.28)
        return pg + beta * keep * kl_estimate(lp, d["teacher_logprobs"], "k3") + 0 * ent

    got = _run(cfg, d, progress=0.25)
    _check(got, _expected(per_token, _masked_seq_mean, d))
    acc = MetricAccumulator()
    acc.add(got[1])
    assert acc.finalize()["kd/beta"] == pytest.approx(beta, rel=1e-15)


def test_sft_is_token_nll_with_sum_norm():
    d = _batch(seed=3)
    cfg = LossConfig(algorithm="sft", aggregation="seq-mean-token-sum-norm", max_response_len=8)
    assert required_inputs(cfg) == frozenset()

    def reduce(per_token, mask):
        rows = [v[m].sum() / 8 for v, m in zip(per_token, mask) if m.any()]
        return torch.stack(rows).mean()

    _check(_run(cfg, d), _expected(lambda lp, ent: -lp + 0 * ent, reduce, d))


@pytest.mark.parametrize("algorithm", ["rlad", "grpo", "kdrl", "sft"])
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_splitting_into_micro_batches_gives_the_same_loss_grad_and_metrics(algorithm, aggregation):
    d = _batch(b=7, t=6, seed=4)
    d["mask"][3] = False  # an empty response
    d["correct"] = torch.tensor([True, False, False, True, False, True, False])
    cfg = LossConfig(algorithm=algorithm, aggregation=aggregation, max_response_len=6, kl_beta=0.05,
                     entropy_coef=0.01, kd_skip_correct=True)
    full_loss, full_metrics, full_g, _ = _run(cfg, d)
    full_acc = MetricAccumulator()
    full_acc.add(full_metrics)

    den = Denominators(0.0, 0.0)
    bounds = [0, 2, 3, 7]
    for a, b in zip(bounds[:-1], bounds[1:]):
        den = den + local_denominators(d["mask"][a:b])
    lp = d["logprobs"].clone().requires_grad_()
    acc = MetricAccumulator()
    total = 0.0
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = {k: v[a:b] for k, v in d.items() if k not in ("logprobs", "mask")}
        loss, metrics = compute_policy_loss(cfg, logprobs=lp[a:b], mask=d["mask"][a:b], denominators=den, **part)
        loss.backward()
        total += loss.item()
        acc.add(metrics)
    assert total == pytest.approx(full_loss.item(), rel=1e-12, abs=1e-14)
    assert torch.allclose(lp.grad, full_g, rtol=1e-12, atol=1e-15)
    # simulate two DP ranks holding halves of the accumulated stats: packed sums add, maxima take the max
    got, want = acc.finalize(), full_acc.finalize()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-14), k


def test_metric_accumulator_packs_for_all_reduce():
    a, b = MetricAccumulator(), MetricAccumulator()
    d = _batch(seed=5)
    cfg = LossConfig(algorithm="rlad")
    for acc, rows in ((a, slice(0, 3)), (b, slice(3, 6))):
        part = {k: v[rows] for k, v in d.items() if k not in ("logprobs", "mask", "entropy")}
        _, metrics = compute_policy_loss(cfg, logprobs=d["logprobs"][rows], mask=d["mask"][rows],
                                         denominators=Denominators(20.0, 6.0), **part)
        acc.add(metrics)
    (sa, ma), (sb, mb) = a.tensors(), b.tensors()
    reduced = a.finalize(sa + sb, torch.maximum(ma, mb))  # what all_reduce(SUM) / all_reduce(MAX) produce
    both = MetricAccumulator()
    both.add(a._stats)
    both.add(b._stats)
    assert reduced == both.finalize()
    ratio = torch.exp(0.5 * (d["logprobs"] - d["old_logprobs"])
                      + 0.5 * (d["logprobs"] - d["teacher_logprobs"]).clamp(-1, 1))[d["mask"]]
    assert reduced["ratio/min"] == pytest.approx(ratio.min().item())
    assert reduced["ratio/max"] == pytest.approx(ratio.max().item())
    with pytest.raises(ValueError, match="every rank must add the same metric names"):
        a.finalize(sa[:-1], ma)


def test_missing_inputs_and_config_errors_name_the_field():
    d = _batch()
    with pytest.raises(ValueError, match=r"needs \['advantages', 'old_logprobs', 'teacher_logprobs'\]"):
        compute_policy_loss("rlad", logprobs=d["logprobs"], mask=d["mask"], denominators=Denominators(1.0, 1.0))
    with pytest.raises(ValueError, match="entropy has shape"):
        compute_policy_loss("sft", logprobs=d["logprobs"], mask=d["mask"], denominators=Denominators(1.0, 1.0),
                            entropy=d["entropy"][:, :2])
    bad = [("algorithm", "ppo"), ("alpha", 1.5), ("eps_low", 1.0), ("eps_high", -0.1),
           ("teacher_log_ratio_clip", 0.0), ("dual_clip_c", 0.5), ("kl_beta", -1.0), ("kl_estimator", "k4"),
           ("entropy_coef", math.nan), ("kd_beta", -1.0), ("kd_beta_final", -1.0), ("kd_estimator", "x"),
           ("kd_skip_correct", 1), ("aggregation", "mean"), ("kd_beta_schedule", "exp")]
    for field, value in bad:
        with pytest.raises(ValueError, match=f"loss.{field} "):
            LossConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match="max_response_len"):
        LossConfig(aggregation="seq-mean-token-sum-norm").validate()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['alhpa'\]"):
        LossConfig.from_dict({"alhpa": 0.5})
    assert LossConfig.from_dict({"alpha": 0.7}).alpha == 0.7


def test_beta_schedules():
    cfg = LossConfig(kd_beta=1.0, kd_beta_final=0.0, kd_beta_schedule="cosine")
    assert [cfg.kd_beta_at(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    assert LossConfig(kd_beta_schedule="constant").kd_beta_at(0.9) == 5e-3
    assert LossConfig(kd_beta_final=None).kd_beta_at(0.9) == 5e-3
    with pytest.raises(ValueError, match="progress"):
        cfg.kd_beta_at(1.5)
