"""The richer teacher signals in the policy loss: the top-k KL term (auxiliary, and as KDRL's penalty) and teacher
trust gated by the verifier (per-response alpha, weighted teacher terms), against plain references; alpha_i = 1 is
GRPO exactly, a constant per-response alpha is the scalar alpha exactly."""

from __future__ import annotations

import math

import pytest
import torch

from rlad_megatron.loss import (
    LossConfig,
    MetricAccumulator,
    compute_policy_loss,
    grpo_token_loss,
    kl_estimate,
    local_denominators,
    required_inputs,
    trrd_token_loss,
)
from rlad_megatron.loss.surrogates import trrd_log_ratio
from rlad_megatron.loss.trust import sequence_alpha, teacher_weights

B, T, K = 6, 5, 4


def _batch(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    lp = (-torch.rand(B, T, generator=gen, dtype=torch.float64) * 3).to(dtype)
    s_full = torch.log_softmax(2 * torch.randn(B, T, 20, generator=gen, dtype=torch.float64), -1)
    t_full = torch.log_softmax(2 * torch.randn(B, T, 20, generator=gen, dtype=torch.float64), -1)
    ids = t_full.topk(K, dim=-1).indices
    mask = torch.rand(B, T, generator=gen) > 0.25
    mask[:, 0] = True
    return {
        "logprobs": lp,
        "old_logprobs": lp + (0.3 * torch.randn(B, T, generator=gen, dtype=torch.float64)).to(dtype),
        "teacher_logprobs": lp + (1.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)).to(dtype),
        "advantages": torch.randn(B, 1, generator=gen, dtype=torch.float64).to(dtype),
        "correct": torch.rand(B, generator=gen) > 0.5,
        "student_topk_logprobs": s_full.gather(-1, ids),
        "teacher_topk_logprobs": t_full.gather(-1, ids),
        "teacher_pass_rate": torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 0.125], dtype=torch.float64),
        "mask": mask,
    }


def _loss_and_grads(cfg, d, progress=0.0):
    lp = d["logprobs"].clone().requires_grad_()
    s_top = d["student_topk_logprobs"].clone().requires_grad_()
    inputs = {k: v for k, v in d.items() if k not in ("logprobs", "student_topk_logprobs", "mask")}
    loss, metrics = compute_policy_loss(cfg, logprobs=lp, mask=d["mask"], student_topk_logprobs=s_top,
                                        denominators=local_denominators(d["mask"]), progress=progress, **inputs)
    loss.backward()
    return loss, metrics, lp.grad, s_top.grad


def _reference(per_token_fn, d):
    """seq-mean-token-mean of ``per_token_fn(lp, s_top)`` written out row by row."""
    lp = d["logprobs"].clone().requires_grad_()
    s_top = d["student_topk_logprobs"].clone().requires_grad_()
    per_token = per_token_fn(lp, s_top)
    rows = [v[m].sum() / m.sum() for v, m in zip(per_token, d["mask"]) if m.any()]
    value = torch.stack(rows).mean()
    value.backward()
    return value, lp.grad, s_top.grad


def _plain_topk_kl(s_top, t_top, direction):
    """KL over the k ids plus the tail bucket, written plainly (float64, no floor needed here)."""
    ps, pt = s_top.exp(), t_top.exp()
    ps = torch.cat([ps, 1 - ps.sum(-1, keepdim=True)], -1)
    pt = torch.cat([pt, 1 - pt.sum(-1, keepdim=True)], -1)
    p, q = (pt, ps) if direction == "forward" else (ps, pt)
    return (p * (p.log() - q.log())).sum(-1)


def _assert_same(got, want, exact=False):
    loss, _, g_lp, g_top = got
    value, w_lp, w_top = want
    if exact:
        assert torch.equal(loss, value) and torch.equal(g_lp, w_lp)
        return
    assert loss.item() == pytest.approx(value.item(), rel=1e-12, abs=1e-14)
    torch.testing.assert_close(g_lp, w_lp, rtol=1e-12, atol=1e-15)
    if w_top is not None and g_top is not None:
        torch.testing.assert_close(g_top, w_top, rtol=1e-12, atol=1e-15)


# ---- per-response alpha in the TRRD surrogate ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_constant_per_response_alpha_is_the_scalar_alpha_bit_for_bit(dtype, alpha):
    d = _batch(dtype=dtype)
    kw = dict(eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0)
    out = []
    for a in (alpha, torch.full((B,), alpha, dtype=torch.float64)):
        lp = d["logprobs"].clone().requires_grad_()
        loss = trrd_token_loss(lp, d["old_logprobs"], d["teacher_logprobs"], d["advantages"], alpha=a, **kw)
        loss.sum().backward()
        out.append((loss.detach(), lp.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_response_alpha_one_is_grpo_bit_for_bit_and_others_are_trrd(dtype):
    d = _batch(seed=1, dtype=dtype)
    alpha = torch.tensor([1.0, 0.5, 1.0, 0.3, 1.0, 0.0], dtype=torch.float64)
    kw = dict(eps_low=0.2, eps_high=0.28)
    lp = d["logprobs"].clone().requires_grad_()
    got = trrd_token_loss(lp, d["old_logprobs"], d["teacher_logprobs"], d["advantages"], alpha=alpha,
                          teacher_log_ratio_clip=1.0, **kw)
    got.sum().backward()
    lp_g = d["logprobs"].clone().requires_grad_()
    grpo = grpo_token_loss(lp_g, d["old_logprobs"], d["advantages"], **kw)
    grpo.sum().backward()
    for i, a in enumerate(alpha.tolist()):
        if a == 1.0:
            assert torch.equal(got[i], grpo[i]) and torch.equal(lp.grad[i], lp_g.grad[i])
        else:
            row = d["logprobs"][i:i + 1].clone().requires_grad_()
            want = trrd_token_loss(row, d["old_logprobs"][i:i + 1], d["teacher_logprobs"][i:i + 1],
                                   d["advantages"][i:i + 1], alpha=a, teacher_log_ratio_clip=1.0, **kw)
            want.sum().backward()
            assert torch.equal(got[i], want[0]) and torch.equal(lp.grad[i], row.grad[0])


def test_per_response_alpha_errors():
    d = _batch()
    with pytest.raises(ValueError, match=r"in \[0, 1\] for every response"):
        trrd_log_ratio(d["logprobs"], d["old_logprobs"], d["teacher_logprobs"],
                       alpha=torch.tensor([0.5] * (B - 1) + [1.5]), teacher_log_ratio_clip=1.0)
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        trrd_log_ratio(d["logprobs"], d["old_logprobs"], d["teacher_logprobs"], alpha=torch.ones(B, T),
                       teacher_log_ratio_clip=1.0)


def test_teacher_weights_and_sequence_alpha():
    rate = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    assert teacher_weights(rate, "none", 0.5).tolist() == [1.0] * 5
    assert teacher_weights(rate, "gate", 0.5).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert teacher_weights(rate, "scale", 0.5).tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    assert teacher_weights(rate, "scale", 1.0).tolist() == rate.tolist()
    a = sequence_alpha(0.3, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert a.tolist() == [1.0, 0.3 + 0.7 * 0.5, 0.3]  # exactly 1 and exactly alpha at the ends
    with pytest.raises(ValueError, match="teacher_pass_rate must hold fractions"):
        teacher_weights(torch.tensor([0.5, math.nan]), "gate", 0.5)
    with pytest.raises(ValueError, match="teacher_pass_rate must be"):
        teacher_weights(torch.zeros(2, 2), "gate", 0.5)


# ---- compute_policy_loss ----

@pytest.mark.parametrize("mode", ["gate", "scale"])
def test_rlad_with_teacher_trust_against_reference(mode):
    d = _batch(seed=2)
    cfg = LossConfig(algorithm="rlad", alpha=0.4, teacher_trust=mode, teacher_trust_threshold=0.5)
    assert required_inputs(cfg) == {"old_logprobs", "advantages", "teacher_logprobs", "teacher_pass_rate"}
    rate = d["teacher_pass_rate"]
    w = (rate >= 0.5).double() if mode == "gate" else (rate / 0.5).clamp(max=1.0)

    def per_token(lp, _):
        rows = []
        for i in range(B):
            a = 0.4 + 0.6 * (1 - w[i].item())
            rows.append(trrd_token_loss(lp[i:i + 1], d["old_logprobs"][i:i + 1], d["teacher_logprobs"][i:i + 1],
                                        d["advantages"][i:i + 1], alpha=a, eps_low=0.2, eps_high=0.28,
                                        teacher_log_ratio_clip=1.0))
        return torch.cat(rows)

    got = _loss_and_grads(cfg, d)
    _assert_same(got, _reference(per_token, d))
    acc = MetricAccumulator()
    acc.add(got[1])
    m = acc.finalize()
    assert m["trust/gated_frac"] == pytest.approx(float((w == 0).double().mean()))
    assert m["trust/reduced_frac"] == pytest.approx(float((w < 1).double().mean()))
    assert m["trust/weight"] == pytest.approx(float(w.mean()))
    assert m["trust/pass_rate"] == pytest.approx(float(rate.mean()))


def test_rlad_gated_everywhere_is_grpo_and_trusted_everywhere_is_rlad_exactly():
    d = _batch(seed=3)
    grpo = _loss_and_grads(LossConfig(algorithm="grpo"), d)
    rlad = _loss_and_grads(LossConfig(algorithm="rlad", alpha=0.3), d)
    for rate, want in ((0.0, grpo), (1.0, rlad)):
        e = {**d, "teacher_pass_rate": torch.full((B,), rate, dtype=torch.float64)}
        got = _loss_and_grads(LossConfig(algorithm="rlad", alpha=0.3, teacher_trust="gate"), e)
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("algorithm", ["rlad", "grpo"])
def test_topk_auxiliary_term_against_reference(direction, algorithm):
    d = _batch(seed=4)
    cfg = LossConfig(algorithm=algorithm, alpha=0.5, topk_kl=direction, topk_k=K, topk_beta=0.1)
    assert {"student_topk_logprobs", "teacher_topk_logprobs"} <= required_inputs(cfg)

    def per_token(lp, s_top):
        if algorithm == "rlad":
            pg = trrd_token_loss(lp, d["old_logprobs"], d["teacher_logprobs"], d["advantages"], alpha=0.5,
                                 eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0)
        else:
            pg = grpo_token_loss(lp, d["old_logprobs"], d["advantages"], eps_low=0.2, eps_high=0.28)
        return pg + 0.1 * _plain_topk_kl(s_top, d["teacher_topk_logprobs"], direction)

    got = _loss_and_grads(cfg, d)
    _assert_same(got, _reference(per_token, d))
    acc = MetricAccumulator()
    acc.add(got[1])
    m = acc.finalize()
    kl = _plain_topk_kl(d["student_topk_logprobs"], d["teacher_topk_logprobs"], direction)
    assert m["topk/kl"] == pytest.approx(float(kl[d["mask"]].mean()))
    assert m["topk/teacher_mass"] == pytest.approx(float(d["teacher_topk_logprobs"].exp().sum(-1)[d["mask"]].mean()))


@pytest.mark.parametrize("skip_correct", [False, True])
def test_kdrl_with_topk_penalty_and_gated_trust(skip_correct):
    d = _batch(seed=5)
    cfg = LossConfig(algorithm="kdrl", kd_estimator="topk", topk_kl="reverse", topk_k=K, kd_beta=0.2,
                     kd_beta_final=0.1, kd_skip_correct=skip_correct, teacher_trust="gate")
    beta = 0.2 + (0.1 - 0.2) * 0.5
    w = (d["teacher_pass_rate"] >= 0.5).double().unsqueeze(-1)
    keep = (~d["correct"]).unsqueeze(-1).double() if skip_correct else 1.0

    def per_token(lp, s_top):
        pg = grpo_token_loss(lp, d["old_logprobs"], d["advantages"], eps_low=0.2, eps_high=0.28)
        return pg + beta * keep * w * _plain_topk_kl(s_top, d["teacher_topk_logprobs"], "reverse")

    _assert_same(_loss_and_grads(cfg, d, progress=0.5), _reference(per_token, d))


def test_kdrl_sampled_token_penalty_weighted_by_trust():
    d = _batch(seed=6)
    cfg = LossConfig(algorithm="kdrl", kd_estimator="k2", kd_beta=0.1, kd_beta_final=None, teacher_trust="scale",
                     teacher_trust_threshold=0.5)
    w = (d["teacher_pass_rate"] / 0.5).clamp(max=1.0).unsqueeze(-1)

    def per_token(lp, s_top):
        pg = grpo_token_loss(lp, d["old_logprobs"], d["advantages"], eps_low=0.2, eps_high=0.28)
        return pg + 0.1 * w * kl_estimate(lp, d["teacher_logprobs"], "k2") + 0 * s_top.sum(-1)

    _assert_same(_loss_and_grads(cfg, d), _reference(per_token, d))


def test_gated_teacher_term_is_zero_even_where_it_is_not_finite():
    d = _batch(seed=7)
    d["teacher_topk_logprobs"] = d["teacher_topk_logprobs"].clone()
    d["teacher_topk_logprobs"][0, :, 0] = -math.inf  # reverse KL infinite on response 0, whose pass rate is 0
    cfg = LossConfig(algorithm="grpo", topk_kl="reverse", topk_k=K, topk_beta=0.1, teacher_trust="gate")
    loss, _, g_lp, g_top = _loss_and_grads(cfg, d)
    assert torch.isfinite(loss) and torch.isfinite(g_top).all() and torch.all(g_top[0] == 0)


def test_split_into_micro_batches_gives_the_same_loss_and_grads():
    d = _batch(seed=8)
    cfg = LossConfig(algorithm="rlad", topk_kl="forward", topk_k=K, topk_beta=0.05, teacher_trust="scale",
                     aggregation="token-mean")
    whole = _loss_and_grads(cfg, d)
    den = local_denominators(d["mask"])
    lp = d["logprobs"].clone().requires_grad_()
    s_top = d["student_topk_logprobs"].clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 6)):
        inputs = {k: (v[rows] if k not in ("advantages",) else v[rows]) for k, v in d.items()
                  if k not in ("logprobs", "student_topk_logprobs", "mask", "correct")}
        loss, _ = compute_policy_loss(cfg, logprobs=lp[rows], mask=d["mask"][rows], denominators=den,
                                      student_topk_logprobs=s_top[rows], **inputs)
        total = total + loss
    total.backward()
    assert total.item() == pytest.approx(whole[0].item(), rel=1e-12)
    torch.testing.assert_close(lp.grad, whole[2], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(s_top.grad, whole[3], rtol=1e-12, atol=1e-15)


def test_input_shape_errors_name_the_input():
    d = _batch()
    cfg = LossConfig(algorithm="grpo", topk_kl="forward", topk_k=K + 1, topk_beta=0.1)
    with pytest.raises(ValueError, match=r"student_topk_logprobs has shape .* loss.topk_k"):
        _loss_and_grads(cfg, d)
    cfg = LossConfig(algorithm="rlad", teacher_trust="gate")
    with pytest.raises(ValueError, match="needs \\['teacher_pass_rate'\\]"):
        _loss_and_grads(cfg, {**d, "teacher_pass_rate": None})
    with pytest.raises(ValueError, match="teacher_pass_rate must be"):
        _loss_and_grads(cfg, {**d, "teacher_pass_rate": d["teacher_pass_rate"][:2]})


@pytest.mark.parametrize("fields,message", [
    ({"topk_kl": "mixed"}, "loss.topk_kl must be one of"),
    ({"topk_k": 0}, "loss.topk_k must be an int >= 1"),
    ({"topk_beta": -1.0}, "loss.topk_beta must be"),
    ({"topk_beta": 0.1}, r"loss.topk_beta=0.1 needs loss.topk_kl=forward or reverse"),
    ({"algorithm": "kdrl", "kd_estimator": "topk"}, "loss.kd_estimator=topk needs loss.topk_kl"),
    ({"topk_kl": "reverse"}, "loss.topk_kl=reverse has no effect"),
    ({"algorithm": "sft", "topk_kl": "forward", "topk_beta": 0.1}, "loss.topk_beta > 0 needs"),
    ({"teacher_trust": "always"}, "loss.teacher_trust must be one of"),
    ({"teacher_trust_threshold": 0.0}, "loss.teacher_trust_threshold must be > 0"),
    ({"teacher_trust_threshold": 1.5}, "loss.teacher_trust_threshold must be a number in"),
    ({"algorithm": "grpo", "teacher_trust": "gate"}, "loss.teacher_trust=gate has no effect"),
])
def test_config_errors_name_the_key(fields, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**fields).validate()


def test_required_inputs_of_the_new_settings():
    base = {"old_logprobs", "advantages"}
    assert required_inputs(LossConfig(algorithm="grpo", topk_kl="reverse", topk_beta=0.1)) == base | {
        "student_topk_logprobs", "teacher_topk_logprobs"}
    assert required_inputs(LossConfig(algorithm="kdrl", kd_estimator="topk", topk_kl="reverse",
                                      teacher_trust="gate")) == base | {
        "teacher_logprobs", "student_topk_logprobs", "teacher_topk_logprobs", "teacher_pass_rate"}
    assert "student_topk_logprobs" not in required_inputs(LossConfig())  # defaults: nothing new


@pytest.mark.parametrize("overrides,message", [
    (["loss.topk_kl=forward"], "has no effect"),
])
def test_run_config_refuses_topk_that_nothing_uses(overrides, message):
    from rlad_megatron.config import ConfigError, load_run_config
    from rlad_megatron.config.docs import iter_keys

    base = ["model.student=/s", "model.teacher=/t", "data.train_files=a.jsonl"]
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, base + overrides)
    assert load_run_config(None, base + ["loss.teacher_trust=gate"]).loss.teacher_trust == "gate"  # wired
    documented = {d.key for d in iter_keys() if d.doc}
    assert {"loss.topk_kl", "loss.topk_k", "loss.topk_beta", "loss.teacher_trust",
            "loss.teacher_trust_threshold"} <= documented


@pytest.mark.parametrize("overrides", [
    ["loss.algorithm=grpo", "loss.topk_kl=reverse", "loss.topk_beta=0.1"],
    ["loss.algorithm=rlad", "loss.topk_kl=forward", "loss.topk_beta=0.5", "loss.topk_k=8"],
    ["loss.algorithm=kdrl", "loss.kd_estimator=topk", "loss.topk_kl=reverse"],
    ["loss.algorithm=kdrl", "loss.kd_estimator=topk", "loss.topk_kl=reverse", "teacher.placement=separate",
     "teacher.ranks=1"],
    ["loss.algorithm=rlad", "loss.topk_kl=forward", "loss.topk_beta=0.5", "teacher.source=vllm"],
    ["loss.algorithm=grpo", "loss.topk_kl=reverse", "loss.topk_beta=0.1", "teacher.source=vllm",
     "teacher.placement=separate"],
])
def test_run_config_takes_topk_with_a_teacher_that_has_it(overrides):
    from rlad_megatron.config import load_run_config, teacher_use

    config = load_run_config(None, ["model.student=/s", "model.teacher=/t", "data.train_files=a.jsonl"] + overrides)
    assert teacher_use(config.loss) == "logprobs"
