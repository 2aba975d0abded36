"""Teacher trust gated by the verifier: a per-response teacher weight from the teacher's pass rate on the prompt.

The pass rate of a prompt is the fraction of the teacher's own samples the task's verifier marks correct
(measured before training by ``rlad-megatron teacher-trust``; stored in the data file as ``teacher_pass_rate``).
Where the teacher fails a prompt, imitating it there is harmful, so its weight ``w`` in ``[0, 1]`` goes down:

- ``gate``: ``w = 1`` if ``pass_rate >= threshold`` else ``0``
- ``scale``: ``w = min(1, pass_rate / threshold)`` (a linear ramp up to the threshold, full trust above it)

TRRD then uses the per-response ``alpha_i = alpha + (1 - alpha)(1 - w_i)`` (the weight on the old student; the
teacher's share ``1 - alpha_i = w_i (1 - alpha)``): ``w_i = 0`` is exactly GRPO for that response, ``w_i = 1``
exactly the configured ``alpha``. KL-to-teacher terms (KDRL's penalty, the top-k term) are multiplied by ``w_i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlad_megatron.loss.metrics import Stat, fraction_stat, mean_stat

TEACHER_TRUST_MODES: tuple[str, ...] = ("none", "gate", "scale")


def teacher_weights(pass_rate: Tensor, mode: str, threshold: float) -> Tensor:
    """``[B]`` float64 teacher weights in ``[0, 1]`` from ``[B]`` pass rates in ``[0, 1]`` (no gradient).

    ``mode="none"`` gives all ones.
    """
    if mode not in TEACHER_TRUST_MODES:
        raise ValueError(f"teacher trust mode must be one of {list(TEACHER_TRUST_MODES)}, got {mode!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"teacher trust threshold must be in (0, 1], got {threshold!r}")
    rate = pass_rate.detach().to(torch.float64)
    if rate.dim() != 1:
        raise ValueError(f"teacher_pass_rate must be [B] (one per response), got shape {tuple(pass_rate.shape)}")
    if rate.numel() and not bool(((rate >= 0) & (rate <= 1)).all()):
        raise ValueError("teacher_pass_rate must hold fractions in [0, 1] (NaN is not allowed): "
                         f"min {float(rate.min())}, max {float(rate.max())}")
    if mode == "none":
        return torch.ones_like(rate)
    if mode == "gate":
        return (rate >= threshold).to(torch.float64)
    return (rate / threshold).clamp(max=1.0)


def sequence_alpha(alpha: float, weights: Tensor) -> Tensor:
    """``[B]`` float64 per-response TRRD alpha ``alpha + (1 - alpha)(1 - w)``, exactly ``alpha`` where ``w = 1`` and
    exactly 1 (GRPO) where ``w = 0``."""
    w = weights.to(torch.float64)
    mixed = alpha + (1.0 - alpha) * (1.0 - w)
    full = torch.full_like(w, float(alpha))
    return torch.where(w >= 1.0, full, torch.where(w <= 0.0, torch.ones_like(w), mixed))


def trust_metrics(pass_rate: Tensor, weights: Tensor, mask: Tensor) -> dict[str, Stat]:
    """Per-response fractions over the responses with at least one valid token (``mask`` ``[B, T]``):
    ``trust/gated_frac`` (w = 0: the teacher is off), ``trust/reduced_frac`` (w < 1), ``trust/weight`` (mean w),
    ``trust/pass_rate`` (mean pass rate)."""
    has_tokens = mask.any(dim=-1)
    return {
        "trust/gated_frac": fraction_stat(weights <= 0.0, has_tokens),
        "trust/reduced_frac": fraction_stat(weights < 1.0, has_tokens),
        "trust/weight": mean_stat(weights, has_tokens),
        "trust/pass_rate": mean_stat(pass_rate.to(torch.float64), has_tokens),
    }
