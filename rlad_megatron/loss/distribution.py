"""KL terms over the teacher's top-k tokens with a tail bucket (a distribution signal, not one sampled token).

Per position of the student's sampled sequence the teacher sends its ``K`` most likely tokens and their log-probs;
the student's log-probs at the same ids come from :func:`rlad_megatron.logprobs.vocab_parallel_logprobs_at`. Each
side becomes a distribution over ``K + 1`` buckets: the ``K`` ids, and the tail (every other token) with the rest
of the mass, ``1 - sum_k p(id_k)``. Then, per position:

- forward ``KL(T || S) = sum_b p_T(b) (log p_T(b) - log p_S(b))`` (mass-covering; NeMo-RL's and verl's top-k KD)
- reverse ``KL(S || T) = sum_b p_S(b) (log p_S(b) - log p_T(b))`` (mode-seeking; KDRL's direction)

over the buckets ``b``. Both are exact KLs of the bucketed distributions, hence >= 0, and equal to the
full-vocabulary KL when ``K`` is the whole vocabulary (the reverse one is infinite where the teacher gives one of
its top-k ids probability 0, as the exact KL is). Pure torch: ``[B, T, K]`` in, ``[B, T]`` out.

Precision: from float32 log-probs the tail mass is accurate to about ``1e-7`` absolute, so where a side's tail is
small (a peaked distribution, large ``K``) the tail bucket's log-ratio carries a relative error of ``1e-7 / tail``;
tails below ``TAIL_FLOOR`` are floored.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TOPK_KL_DIRECTIONS: tuple[str, ...] = ("forward", "reverse")

TAIL_FLOOR = 1e-6
"""Smallest tail mass: ``1 - sum_k p`` from float32 log-probs is accurate to about ``K * 1e-8``, so a tail below
this is rounding noise; floored, it contributes at most ``1e-6 * |log ratio|`` and no gradient."""


def with_tail(topk_logprobs: Tensor) -> Tensor:
    """``[..., K]`` log-probs of ``K`` distinct tokens -> ``[..., K + 1]`` log-probs with the tail bucket last.

    The tail is ``log max(1 - sum_k exp(lp_k), TAIL_FLOOR)``, its sum taken in float64; differentiable.
    """
    mass = topk_logprobs.double().exp().sum(dim=-1, keepdim=True)
    log_tail = torch.log((1.0 - mass).clamp_min(TAIL_FLOOR)).to(topk_logprobs.dtype)
    return torch.cat([topk_logprobs, log_tail], dim=-1)


def _plogp_ratio(logp: Tensor, logq: Tensor) -> Tensor:
    """``p (log p - log q)`` elementwise, 0 where ``p = 0`` (``log p = -inf``), with finite gradients there."""
    present = logp > -math.inf
    safe = torch.where(present, logp, torch.zeros((), dtype=logp.dtype, device=logp.device))
    return torch.where(present, safe.exp() * (safe - logq), torch.zeros((), dtype=logp.dtype, device=logp.device))


def topk_kl(student_topk_logprobs: Tensor, teacher_topk_logprobs: Tensor, direction: str) -> Tensor:
    """KL between the student and the teacher over the teacher's top-k ids plus the tail bucket.

    Args:
        student_topk_logprobs: ``[B, T, K]`` student log-probs at the teacher's top-k ids (normalised over the whole
            vocabulary), with gradient.
        teacher_topk_logprobs: ``[B, T, K]`` the teacher's log-probs of its top-k ids (no gradient expected).
        direction: ``forward`` (``KL(T || S)``) or ``reverse`` (``KL(S || T)``).

    Returns:
        ``[B, T]`` per-position KL (unmasked; see :func:`masked_topk_kl` for padded positions).
    """
    if direction not in TOPK_KL_DIRECTIONS:
        raise ValueError(f"top-k KL direction must be one of {list(TOPK_KL_DIRECTIONS)}, got {direction!r}")
    if student_topk_logprobs.shape != teacher_topk_logprobs.shape:
        raise ValueError(
            f"student_topk_logprobs {tuple(student_topk_logprobs.shape)} and teacher_topk_logprobs "
            f"{tuple(teacher_topk_logprobs.shape)} must have the same shape [B, T, K]"
        )
    s = with_tail(student_topk_logprobs)
    t = with_tail(teacher_topk_logprobs.to(s.dtype))
    if direction == "forward":
        return _plogp_ratio(t, s).sum(dim=-1)
    return _plogp_ratio(s, t).sum(dim=-1)


def masked_topk_kl(
    student_topk_logprobs: Tensor, teacher_topk_logprobs: Tensor, mask: Tensor, direction: str
) -> Tensor:
    """:func:`topk_kl` where ``mask`` ``[B, T]`` (bool) holds, 0 elsewhere; padded positions may hold anything
    (garbage, -inf) and still give finite values and gradients."""
    if tuple(mask.shape) != tuple(student_topk_logprobs.shape[:-1]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} must be the top-k log-probs' [B, T] = "
                         f"{tuple(student_topk_logprobs.shape[:-1])}")
    k = student_topk_logprobs.shape[-1]
    m = mask.unsqueeze(-1)
    uniform = torch.full((), -math.log(k + 1), dtype=student_topk_logprobs.dtype, device=student_topk_logprobs.device)
    s = torch.where(m, student_topk_logprobs, uniform)
    t = torch.where(m, teacher_topk_logprobs.to(s.dtype), uniform)
    kl = topk_kl(s, t, direction)
    return torch.where(mask, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))


def topk_mass(topk_logprobs: Tensor) -> Tensor:
    """``[B, T, K] -> [B, T]``: the probability the top-k ids hold (1 - the tail), detached; a coverage metric."""
    return topk_logprobs.detach().double().exp().sum(dim=-1)
