"""Truncated importance sampling (TIS) for the remaining rollout-engine vs learner log-prob mismatch."""
from __future__ import annotations

import torch


def tis_weights(learner_old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token weights ``min(pi_old / pi_engine, cap) = min(exp(old_lp - engine_lp), cap)``, no gradient.

    The samples were drawn by the engine (``engine_lp``) but the loss treats them as drawn by the learner's old
    policy (``old_lp``); multiplying each token's loss by this weight corrects the difference, truncated at
    ``cap`` to bound the variance. Shapes: any, equal (e.g. ``[B, T]``); returns float32 of that shape.
    Mask padding outside (the weight of a padded position is meaningless).
    """
    if learner_old_logprobs.shape != engine_logprobs.shape:
        raise ValueError(
            f"tis_weights: learner_old_logprobs {tuple(learner_old_logprobs.shape)} and engine_logprobs "
            f"{tuple(engine_logprobs.shape)} must have the same shape"
        )
    if not cap > 0:
        raise ValueError(f"tis_weights: cap must be positive, got {cap}")
    log_ratio = learner_old_logprobs.detach().float() - engine_logprobs.detach().float()
    return torch.exp(log_ratio).clamp(max=cap)
