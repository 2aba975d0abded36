"""Plain single-device token log-probs and entropy: the reference the vocab-parallel kernels are tested against.

They materialise the full-vocabulary ``log_softmax`` in float32 (several times the logits' size in memory), so
use them for tests and tiny models only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _valid(logits: Tensor, vocab_size: int | None) -> Tensor:
    if vocab_size is None:
        return logits
    if not 0 < vocab_size <= logits.shape[-1]:
        raise ValueError(f"vocab_size must be in [1, {logits.shape[-1]}] (the logits' last dim), got {vocab_size}")
    return logits[..., :vocab_size]


def token_logprobs_reference(logits: Tensor, targets: Tensor, vocab_size: int | None = None) -> Tensor:
    """``log softmax(logits)[target]`` in float32.

    Args:
        logits: ``[..., V]`` full-vocabulary logits (any float dtype; upcast to float32).
        targets: ``[...]`` token ids, or ``[..., K]`` for K ids per position.
        vocab_size: the true vocabulary; columns at and beyond it (padding) are dropped.

    Returns:
        ``[...]`` (or ``[..., K]``) float32 log-probs, differentiable w.r.t. ``logits``.
    """
    logp = torch.log_softmax(_valid(logits, vocab_size).float(), dim=-1)
    if targets.dim() == logits.dim():
        return logp.gather(-1, targets.long())
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def entropy_reference(logits: Tensor, vocab_size: int | None = None) -> Tensor:
    """Entropy ``-sum_v p_v log p_v`` of ``softmax(logits)`` per position, ``[..., V] -> [...]``, float32."""
    logp = torch.log_softmax(_valid(logits, vocab_size).float(), dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)  # 0 log 0 = 0 (e.g. -inf logits), NaN-free grad
