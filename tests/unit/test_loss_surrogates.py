"""TRRD and GRPO/DAPO per-token losses vs an independent scalar reference, and the properties of ALGORITHM.md."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlad_megatron.loss import grpo_token_loss, kl_estimate, trrd_token_loss
from rlad_megatron.loss.surrogates import grpo_parts, trrd_parts

SETTINGS = settings(max_examples=60, deadline=None)


def _ref_token(lp, old, t, a, alpha, el, eh, c, dual=None):
    """Scalar TRRD loss and d loss / d lp, d loss / d t_lp, written branch by branch (float64 Python)."""
    diff = lp - t
    clamped = max(-c, min(c, diff))
    teacher_passes = -c <= diff <= c  # torch.clamp passes the gradient on the closed interval
    log_r = alpha * (lp - old) + (1 - alpha) * clamped
    r = math.exp(log_r)
    dr_dlp = r * (alpha + (1 - alpha) * teacher_passes)
    dr_dt = r * (-(1 - alpha) * teacher_passes)
    if a >= 0:
        active = r <= 1 + eh  # min(rA, clip(r)A) picks rA unless r is above the upper clip
        value = -min(r * a, min(max(r, 1 - el), 1 + eh) * a)
    else:
        active = r >= 1 - el
        value = -min(r * a, min(max(r, 1 - el), 1 + eh) * a)
        if dual is not None and value > -dual * a:
            value, active = -dual * a, False
    g = -a if active else 0.0
    return value, g * dr_dlp, g * dr_dt


def _rand(b=3, t=7, seed=0, spread=0.3):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    old = lp + spread * torch.randn(b, t, generator=gen, dtype=torch.float64)
    teacher = lp + 2 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, 1, generator=gen, dtype=torch.float64)
    return lp, old, teacher, adv


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dual", [None, 3.0])
def test_trrd_matches_scalar_reference_values_and_grads(alpha, dual):
    lp, old, teacher, adv = _rand(seed=int(alpha * 10) + (dual is not None))
    x = lp.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    loss = trrd_parts(x, old, t, adv, alpha=alpha, eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0,
                      dual_clip_c=dual).loss
    loss.sum().backward()
    for i in range(lp.shape[0]):
        for j in range(lp.shape[1]):
            v, g_lp, g_t = _ref_token(lp[i, j].item(), old[i, j].item(), teacher[i, j].item(), adv[i, 0].item(),
                                      alpha, 0.2, 0.28, 1.0, dual)
            assert loss[i, j].item() == pytest.approx(v, rel=1e-12, abs=1e-12)
            assert x.grad[i, j].item() == pytest.approx(g_lp, rel=1e-12, abs=1e-12)
            assert t.grad[i, j].item() == pytest.approx(g_t, rel=1e-12, abs=1e-12)


def test_grpo_matches_scalar_reference_and_public_signature():
    lp, old, teacher, adv = _rand(seed=5, spread=0.5)
    x = lp.clone().requires_grad_()
    loss = grpo_token_loss(x, old, adv, eps_low=0.2, eps_high=0.28)
    assert loss.shape == lp.shape
    loss.sum().backward()
    for i in range(lp.shape[0]):
        for j in range(lp.shape[1]):
            # GRPO is TRRD with alpha = 1 (teacher irrelevant) in the scalar reference
            v, g, _ = _ref_token(lp[i, j].item(), old[i, j].item(), 0.0, adv[i, 0].item(), 1.0, 0.2, 0.28, 1.0)
            assert loss[i, j].item() == pytest.approx(v, rel=1e-12, abs=1e-12)
            assert x.grad[i, j].item() == pytest.approx(g, rel=1e-12, abs=1e-12)


finite = st.floats(-8.0, 0.0, allow_nan=False, width=32)


@st.composite
def token_batch(draw):
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 5))
    n = b * t
    lp = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).view(b, t)
    old = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).view(b, t)
    teacher = torch.tensor(draw(st.lists(finite, min_size=n, max_size=n))).view(b, t)
    per_token_adv = draw(st.booleans())
    shape = (b, t) if per_token_adv else (b, 1)
    m = shape[0] * shape[1]
    adv = torch.tensor(draw(st.lists(st.floats(-3, 3, width=32), min_size=m, max_size=m))).view(shape)
    return lp, old, teacher, adv


@SETTINGS
@given(batch=token_batch(), eps_low=st.floats(0.01, 0.9), eps_high=st.floats(0.01, 2.0), c=st.floats(0.05, 5.0))
def test_alpha_one_is_grpo_bit_for_bit(batch, eps_low, eps_high, c):
    lp, old, teacher, adv = batch
    x1 = lp.clone().requires_grad_()
    x2 = lp.clone().requires_grad_()
    a = trrd_token_loss(x1, old, teacher, adv, alpha=1.0, eps_low=eps_low, eps_high=eps_high,
                        teacher_log_ratio_clip=c)
    b = grpo_token_loss(x2, old, adv, eps_low=eps_low, eps_high=eps_high)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    assert torch.equal(a, b)
    assert torch.equal(x1.grad, x2.grad)


@SETTINGS
@given(batch=token_batch(), alpha=st.floats(0.0, 1.0), c=st.floats(0.05, 5.0))
def test_zero_advantage_gives_zero_loss_and_gradient(batch, alpha, c):
    lp, old, teacher, adv = batch
    x = lp.clone().requires_grad_()
    t = teacher.clone().requires_grad_()
    loss = trrd_token_loss(x, old, t, torch.zeros_like(adv), alpha=alpha, eps_low=0.2, eps_high=0.28,
                           teacher_log_ratio_clip=c)
    loss.sum().backward()
    assert torch.all(loss == 0)
    assert torch.all(x.grad == 0) and torch.all(t.grad == 0)


@SETTINGS
@given(batch=token_batch(), alpha=st.floats(0.0, 0.99), c=st.floats(0.05, 2.0))
def test_teacher_carries_no_gradient_where_its_clamp_is_active(batch, alpha, c):
    lp, old, teacher, adv = batch
    t = teacher.clone().requires_grad_()
    parts = trrd_parts(lp, old, t, adv, alpha=alpha, eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=c)
    parts.loss.sum().backward()
    clamped = (lp - teacher).abs() > c
    assert torch.equal(parts.teacher_clamped, clamped)
    assert torch.all(t.grad[clamped] == 0)
    # elsewhere the teacher moves the loss exactly when the token is inside the trust region and A != 0
    adv_full = adv.expand_as(lp)
    inside = ~clamped & ~parts.clipped_low & ~parts.clipped_high & (adv_full.abs() > 1e-6)
    assert torch.all(t.grad[inside] != 0)


def test_selective_imitation_positive_advantage_teacher_liked_token_may_rise_further():
    # old = current; the student has already raised the token past GRPO's upper clip
    old = torch.tensor([[-2.0]])
    lp = old + math.log(1.28) + 0.05
    teacher = lp + 0.5  # the teacher likes the token more than the student does
    adv = torch.tensor([[1.0]])
    x_g, x_t = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    grpo_token_loss(x_g, old, adv, eps_low=0.2, eps_high=0.28).sum().backward()
    trrd_token_loss(x_t, old, teacher, adv, alpha=0.5, eps_low=0.2, eps_high=0.28,
                    teacher_log_ratio_clip=1.0).sum().backward()
    assert x_g.grad.item() == 0.0  # GRPO: clipped, no more push
    assert x_t.grad.item() < 0.0  # TRRD: still inside the region, the loss keeps pushing lp up


def test_selective_imitation_negative_advantage_teacher_liked_token_not_pushed_down():
    old = torch.tensor([[-2.0]])
    lp = old.clone()  # first update: r_old = 1
    teacher = lp + 0.9  # the teacher likes it (inside the clamp)
    adv = torch.tensor([[-1.0]])
    x_g, x_t = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    grpo_token_loss(x_g, old, adv, eps_low=0.2, eps_high=0.28).sum().backward()
    parts = trrd_parts(x_t, old, teacher, adv, alpha=0.5, eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0)
    parts.loss.sum().backward()
    assert x_g.grad.item() > 0.0  # GRPO pushes the token down
    assert parts.clipped_low.item() and x_t.grad.item() == 0.0  # TRRD: already below 1 - eps_low


def test_dual_clip_caps_negative_advantage_loss():
    lp = torch.tensor([[0.0, 0.0]])
    old = torch.tensor([[-3.0, -3.0]])  # r = e^3 ~ 20
    adv = torch.tensor([[-1.0], [1.0]])[:1].expand(1, 2).clone()
    x = lp.clone().requires_grad_()
    parts = grpo_parts(x, old, adv, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
    parts.loss.sum().backward()
    assert parts.loss.tolist() == [[3.0, 3.0]]
    assert parts.dual_clipped.all() and torch.all(x.grad == 0)
    no_cap = grpo_token_loss(lp, old, adv, eps_low=0.2, eps_high=0.28)
    assert torch.allclose(no_cap, torch.full_like(no_cap, math.exp(3.0)))


def test_advantage_shapes_and_errors():
    lp, old, teacher, adv = _rand()
    flat = grpo_token_loss(lp, old, adv.view(-1), eps_low=0.2, eps_high=0.28)
    col = grpo_token_loss(lp, old, adv, eps_low=0.2, eps_high=0.28)
    full = grpo_token_loss(lp, old, adv.expand_as(lp), eps_low=0.2, eps_high=0.28)
    assert torch.equal(flat, col) and torch.equal(col, full)
    with pytest.raises(ValueError, match="advantages of shape"):
        grpo_token_loss(lp, old, adv[:2], eps_low=0.2, eps_high=0.28)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        grpo_token_loss(lp, old[:, :3], adv, eps_low=0.2, eps_high=0.28)
    with pytest.raises(ValueError, match="alpha"):
        trrd_token_loss(lp, old, teacher, adv, alpha=1.5, eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=1.0)
    with pytest.raises(ValueError, match="teacher_log_ratio_clip"):
        trrd_token_loss(lp, old, teacher, adv, alpha=0.5, eps_low=0.2, eps_high=0.28, teacher_log_ratio_clip=0.0)
    with pytest.raises(ValueError, match="eps_low"):
        grpo_token_loss(lp, old, adv, eps_low=1.0, eps_high=0.28)


def test_kl_estimators_against_formulas_and_exact_kl():
    lp = torch.tensor([-1.0, -0.5, -2.0], dtype=torch.float64)
    other = torch.tensor([-1.5, -0.5, -0.1], dtype=torch.float64)
    d = (other - lp).tolist()
    assert kl_estimate(lp, other, "k1").tolist() == pytest.approx([-x for x in d])
    assert kl_estimate(lp, other, "k2").tolist() == pytest.approx([0.5 * x * x for x in d])
    assert kl_estimate(lp, other, "k3").tolist() == pytest.approx([math.exp(x) - x - 1 for x in d])
    # k3 is unbiased for KL(p || q) when tokens are drawn from p: check on an exact expectation
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    for est in ("k1", "k3"):
        expected = float((p * kl_estimate(p.log(), q.log(), est)).sum())
        assert expected == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, other, "k4")
