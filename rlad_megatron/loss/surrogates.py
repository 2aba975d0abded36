"""Per-token policy-gradient surrogates: GRPO/DAPO and TRRD (arXiv 2602.22495, Eq. 3-5 with Appendix B).

All functions are pure and element-wise: tensors ``[B, T]`` in, per-token losses ``[B, T]`` out (to be
minimised, not yet masked or aggregated; see :mod:`rlad_megatron.loss.aggregation`). Advantages are ``[B, 1]``
(one per response, broadcast over tokens), ``[B]`` (same) or ``[B, T]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rlad_megatron.config.loss import KL_ESTIMATORS


class SurrogateParts(NamedTuple):
    """A clipped surrogate and the token-level facts its metrics are made of (all ``[B, T]``)."""

    loss: Tensor
    """Per-token loss ``-min(r A, clip(r) A)`` (with the optional dual clip), to minimise."""
    log_ratio: Tensor
    """``log r``; for TRRD the mixed log-ratio of Eq. 4."""
    clipped_low: Tensor
    """bool: ``A < 0`` and ``r < 1 - eps_low``: the lower clip binds (the token gets no gradient)."""
    clipped_high: Tensor
    """bool: ``A > 0`` and ``r > 1 + eps_high``: the upper clip binds (the token gets no gradient)."""
    dual_clipped: Tensor
    """bool: ``A < 0`` and the dual-clip cap ``-c A`` binds."""
    teacher_clamped: Tensor | None
    """TRRD only, bool: ``|log pi_S - log pi_T| > teacher_log_ratio_clip`` (the teacher term has no gradient)."""


def _advantages_like(advantages: Tensor, ref: Tensor, name: str = "advantages") -> Tensor:
    if advantages.dim() == 1 and ref.dim() == 2 and advantages.shape[0] == ref.shape[0]:
        return advantages.unsqueeze(-1)
    if advantages.dim() != ref.dim() or any(a not in (1, r) for a, r in zip(advantages.shape, ref.shape)):
        raise ValueError(
            f"{name} of shape {tuple(advantages.shape)} does not broadcast to the log-probs' shape "
            f"{tuple(ref.shape)}; pass [B], [B, 1] or [B, T]"
        )
    return advantages


def _check_same_shape(ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logprobs has {tuple(ref.shape)}; they must match")


def _check_eps(eps_low: float, eps_high: float) -> None:
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low!r}")
    if not eps_high >= 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high!r}")


def clipped_surrogate(
    log_ratio: Tensor,
    advantages: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
    teacher_clamped: Tensor | None = None,
) -> SurrogateParts:
    """PPO/DAPO clipped surrogate on a given log-ratio (Eq. 5's outer form).

    ``loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` with ``r = exp(log_ratio)``; with ``dual_clip_c``
    the loss of ``A < 0`` tokens is further capped at ``-dual_clip_c * A`` (dual-clip PPO).

    Args:
        log_ratio: ``[B, T]`` log of the importance ratio, with gradient.
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]``.
    """
    _check_eps(eps_low, eps_high)
    adv = _advantages_like(advantages, log_ratio)
    ratio = torch.exp(log_ratio)
    unclipped = -ratio * adv
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)
        clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)
    if dual_clip_c is not None:
        if not dual_clip_c > 1.0:
            raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c!r}")
        cap = -dual_clip_c * adv
        with torch.no_grad():
            dual_clipped = (adv < 0) & (loss.detach() > cap)
        loss = torch.where(adv < 0, torch.minimum(loss, cap), loss)
    else:
        dual_clipped = torch.zeros_like(clipped_low)
    shape = torch.broadcast_shapes(log_ratio.shape, adv.shape)
    return SurrogateParts(
        loss=loss,
        log_ratio=log_ratio,
        clipped_low=clipped_low.expand(shape),
        clipped_high=clipped_high.expand(shape),
        dual_clipped=dual_clipped.expand(shape),
        teacher_clamped=teacher_clamped,
    )


def _per_sequence_weights(alpha: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, 1 - alpha)`` as ``[B, 1]`` tensors of the log-probs' dtype, each rounded once from float64 (as a
    Python-float alpha is), so that a constant per-response alpha gives the scalar alpha's result bit for bit."""
    if logprobs.dim() != 2 or alpha.dim() not in (1, 2) or alpha.shape[0] != logprobs.shape[0] or (
            alpha.dim() == 2 and alpha.shape[1] != 1):
        raise ValueError(f"a per-response alpha must be [B] or [B, 1] with B = {logprobs.shape[0]} (logprobs "
                         f"{tuple(logprobs.shape)}), got shape {tuple(alpha.shape)}")
    a = alpha.detach().to(torch.float64).reshape(-1, 1)
    if a.numel() and not bool(((a >= 0) & (a <= 1)).all()):
        raise ValueError(f"alpha (weight on the old student) must be in [0, 1] for every response, got min "
                         f"{float(a.min())}, max {float(a.max())}")
    return a.to(logprobs.dtype), (1.0 - a).to(logprobs.dtype)


def trrd_log_ratio(
    logprobs: Tensor,
    old_logprobs: Tensor,
    teacher_logprobs: Tensor,
    *,
    alpha: float | Tensor,
    teacher_log_ratio_clip: float,
) -> tuple[Tensor, Tensor]:
    """TRRD's mixed log-ratio (Eq. 4 with App. B) and where the teacher clamp is active.

    ``log r = alpha (lp - old_lp) + (1 - alpha) clamp(lp - t_lp, -c, c)``: the log-ratio of the student to the
    geometric anchor ``pi_old^alpha pi_T^(1 - alpha)``, with the student/teacher part clamped to ``[-c, c]``.
    ``alpha`` is one number, or one per response (``[B]`` or ``[B, 1]``, e.g. lowered teacher trust,
    :mod:`rlad_megatron.loss.trust`); a response with ``alpha_i = 1`` gets exactly GRPO's log-ratio.

    Returns:
        ``(log_ratio [B, T], teacher_clamped [B, T] bool)``.
    """
    if isinstance(alpha, Tensor):
        w_old, w_teacher = _per_sequence_weights(alpha, logprobs)
    else:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (weight on the old student) must be in [0, 1], got {alpha!r}")
        w_old, w_teacher = alpha, 1.0 - alpha
    if not teacher_log_ratio_clip > 0.0:
        raise ValueError(f"teacher_log_ratio_clip must be > 0, got {teacher_log_ratio_clip!r}")
    c = float(teacher_log_ratio_clip)
    teacher_diff = logprobs - teacher_logprobs
    log_ratio = w_old * (logprobs - old_logprobs) + w_teacher * torch.clamp(teacher_diff, -c, c)
    with torch.no_grad():
        teacher_clamped = teacher_diff.detach().abs() > c
    return log_ratio, teacher_clamped


def trrd_parts(
    logprobs: Tensor,
    old_logprobs: Tensor,
    teacher_logprobs: Tensor,
    advantages: Tensor,
    *,
    alpha: float | Tensor,
    eps_low: float,
    eps_high: float,
    teacher_log_ratio_clip: float,
    dual_clip_c: float | None = None,
) -> SurrogateParts:
    """TRRD per-token loss with the facts its metrics need; see :func:`trrd_token_loss`."""
    _check_same_shape(logprobs, old_logprobs=old_logprobs, teacher_logprobs=teacher_logprobs)
    log_ratio, teacher_clamped = trrd_log_ratio(
        logprobs, old_logprobs, teacher_logprobs, alpha=alpha, teacher_log_ratio_clip=teacher_log_ratio_clip
    )
    return clipped_surrogate(
        log_ratio, advantages, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c,
        teacher_clamped=teacher_clamped,
    )


def trrd_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    teacher_logprobs: Tensor,
    advantages: Tensor,
    *,
    alpha: float | Tensor,
    eps_low: float,
    eps_high: float,
    teacher_log_ratio_clip: float,
) -> Tensor:
    """Trust Region Ratio Distillation per-token loss (arXiv 2602.22495, Eq. 3-5, Appendix B).

    ``log r = alpha (lp - old_lp) + (1 - alpha) clamp(lp - t_lp, -c, c)``, ``r = exp(log r)``,
    ``loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``. ``alpha = 1`` is exactly GRPO (bit for bit).

    Args:
        logprobs: ``[B, T]`` log pi_S of the sampled tokens under the current student (with gradient).
        old_logprobs: ``[B, T]`` the same under the student that generated them (no gradient expected).
        teacher_logprobs: ``[B, T]`` the frozen teacher's log-probs of the same tokens.
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]``.
        alpha: weight on the old student in the anchor, in [0, 1]; one number or one per response (``[B]``).
        eps_low / eps_high: asymmetric clip range of the ratio.
        teacher_log_ratio_clip: ``c`` of App. B (paper: 1.0).

    Returns:
        ``[B, T]`` per-token loss to minimise (unmasked).
    """
    return trrd_parts(
        logprobs, old_logprobs, teacher_logprobs, advantages, alpha=alpha, eps_low=eps_low, eps_high=eps_high,
        teacher_log_ratio_clip=teacher_log_ratio_clip,
    ).loss


def grpo_parts(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> SurrogateParts:
    """GRPO/DAPO per-token loss with the facts its metrics need; see :func:`grpo_token_loss`."""
    _check_same_shape(logprobs, old_logprobs=old_logprobs)
    return clipped_surrogate(
        logprobs - old_logprobs, advantages, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    )


def grpo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> Tensor:
    """GRPO/DAPO clipped surrogate per token: ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``.

    ``r = exp(lp - old_lp)``. Shapes as in :func:`trrd_token_loss`; ``dual_clip_c`` (> 1) optionally caps the
    loss of negative-advantage tokens at ``-dual_clip_c * A``.

    Returns:
        ``[B, T]`` per-token loss to minimise (unmasked).
    """
    return grpo_parts(
        logprobs, old_logprobs, advantages, eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c
    ).loss


def kl_estimate(logprobs: Tensor, other_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_other) from the log-probs of tokens sampled from ``pi``.

    With ``d = other_lp - lp``: ``k1 = -d``, ``k2 = d^2 / 2``, ``k3 = exp(d) - d - 1`` (Schulman's estimators;
    docs/algorithm.md, KDRL). Shapes ``[B, T]`` -> ``[B, T]``; differentiable in both arguments.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator must be one of {list(KL_ESTIMATORS)}, got {estimator!r}")
    _check_same_shape(logprobs, other_logprobs=other_logprobs)
    d = other_logprobs - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.expm1(d) - d
