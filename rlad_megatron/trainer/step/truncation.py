"""What a response cut off at ``rollout.max_new_tokens`` earns: the ``rollout.truncated`` policy and DAPO's soft
overlong penalty (Yu et al. 2025, "DAPO", Eq. 13), applied to one step's rewards before the advantages.

A cut-off response has no final answer of its own: the verifier may still find one (the math reward's "the answer
is X" and last-number fallbacks, a ``\\boxed{}`` written before the model went on thinking) and credit it by
accident. The modes:

- ``reward``: keep the verifier's reward (no protection; what version one did).
- ``zero``: no credit: the reward becomes ``min(reward, 0)`` and the answer counts as wrong. Task penalties
  (e.g. Knights and Knaves' format penalty) stay, so a cut-off never scores above a wrong answer.
- ``mask``: DAPO's overlong filtering: the response leaves the loss (loss mask 0) and its group's mean and std.

``overlong_cache > 0`` adds the soft penalty on top of the mode: 0 up to ``L_max - L_cache`` tokens, then linearly
down to ``-overlong_penalty`` at ``L_max = max_new_tokens`` (a truncated response has ``L_max`` tokens).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

TRUNCATED_MODES: tuple[str, ...] = ("reward", "zero", "mask")


@dataclasses.dataclass(frozen=True)
class TruncationPolicy:
    """How truncated and long responses are rewarded (``rollout.truncated``, ``rollout.overlong_*``)."""

    mode: str = "zero"
    max_new_tokens: int = 64
    overlong_cache: int = 0
    overlong_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in TRUNCATED_MODES:
            raise ValueError(f"truncated={self.mode!r}: choose one of {list(TRUNCATED_MODES)}")
        if not 0 <= self.overlong_cache <= self.max_new_tokens:
            raise ValueError(f"overlong_cache={self.overlong_cache} must be in [0, max_new_tokens="
                             f"{self.max_new_tokens}]")


@dataclasses.dataclass
class ShapedRewards:
    """One step's rewards after the policy. All ``[N]``.

    rewards: what the advantages see. correct: the verdict that counts (False for a cut-off unless ``reward``).
    valid: False for responses left out of the loss and of the group statistics (``mask``).
    penalties: the soft overlong penalty added (<= 0).
    """

    rewards: Tensor
    correct: Tensor
    valid: Tensor
    penalties: Tensor


def overlong_penalty(lengths: Tensor, max_new_tokens: int, cache: int, factor: float = 1.0) -> Tensor:
    """DAPO Eq. 13: ``[N]`` penalty, 0 for ``len <= L_max - L_cache``, ``((L_max - L_cache) - len) / L_cache``
    (times ``factor``) inside the cache window, ``-factor`` from ``L_max`` on."""
    if cache <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    start = max_new_tokens - cache
    return -factor * ((lengths.float() - start) / cache).clamp(0.0, 1.0)


def shape_rewards(rewards: Tensor, correct: Tensor, truncated: Tensor, lengths: Tensor,
                  policy: TruncationPolicy) -> ShapedRewards:
    """Apply ``policy`` to the verifier's ``rewards`` / ``correct`` (``[N]``) given ``truncated`` and ``lengths``."""
    rewards = rewards.float().clone()
    correct = correct.bool().clone()
    truncated = truncated.bool()
    valid = torch.ones_like(correct)
    if policy.mode in ("zero", "mask"):
        rewards = torch.where(truncated, rewards.clamp(max=0.0), rewards)
        correct &= ~truncated
    if policy.mode == "mask":
        valid = ~truncated
    penalties = overlong_penalty(lengths, policy.max_new_tokens, policy.overlong_cache, policy.overlong_penalty)
    return ShapedRewards(rewards=rewards + penalties, correct=correct, valid=valid, penalties=penalties)
