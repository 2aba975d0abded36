"""GRPO group-relative advantages (docs/algorithm.md, "Advantage (GRPO)") and the equal-reward group filter.

Rewards come flat, ``[N]`` with ``N = num_prompts * group_size``, the ``group_size`` responses of one prompt
contiguous (response ``i`` belongs to prompt ``i // group_size``), which is how the rollout returns them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlad_megatron.loss.metrics import Stat

ADVANTAGE_EPS = 1e-6
"""The epsilon added to the group's standard deviation (GRPO's ``std + eps``)."""


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be flat [num_prompts * group_size], got shape {tuple(rewards.shape)}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}; "
            "pass every response of every prompt, grouped contiguously"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: Tensor, group_size: int, normalize_std: bool = True, eps: float = ADVANTAGE_EPS,
    valid: Tensor | None = None,
) -> Tensor:
    """GRPO advantages ``A_i = (r_i - mean_g r) / (std_g r + eps)`` per group of ``group_size`` responses.

    ``std`` is the population standard deviation (``1/G``). With ``normalize_std=False`` (Dr. GRPO) the
    advantage is ``r_i - mean_g r``. A group whose rewards are all equal gets zero advantages.

    Args:
        rewards: ``[N]`` scalar rewards, ``N = num_prompts * group_size``, groups contiguous.
        group_size: ``G``, responses per prompt.
        valid: optional ``[N]`` bool; the group's mean and std are taken over its valid responses only (DAPO's
            overlong filtering leaves truncated responses out), and invalid responses get advantage 0.

    Returns:
        ``[N]`` advantages in the rewards' floating dtype (float32 for integer rewards); no gradient flows.
    """
    groups = _grouped(rewards.detach(), group_size)
    if valid is None:
        centred = groups - groups.mean(dim=-1, keepdim=True)
        if normalize_std:
            centred = centred / (groups.std(dim=-1, unbiased=False, keepdim=True) + eps)
        return centred.reshape(-1)
    weight = _grouped(valid.detach().to(groups.dtype), group_size)
    count = weight.sum(dim=-1, keepdim=True).clamp_min(1.0)
    centred = (groups - (groups * weight).sum(dim=-1, keepdim=True) / count) * weight
    if normalize_std:
        centred = centred / ((centred.square().sum(dim=-1, keepdim=True) / count).sqrt() + eps)
    return centred.reshape(-1)


def equal_reward_groups(rewards: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """``[N]`` bool: True for every response of a group whose rewards are all equal (they carry no signal).

    ``valid``: optional ``[N]`` bool; only a group's valid responses are compared (DAPO's overlong filtering leaves
    truncated responses out), and a group with at most one valid response is uniform. DAPO's dynamic sampling drops
    these groups; use ``~equal_reward_groups(...)`` as the keep mask and report ``group_filter_metrics`` so the
    dropped fraction is visible.
    """
    groups = _grouped(rewards.detach(), group_size)
    if valid is None:
        same = (groups == groups[:, :1]).all(dim=-1, keepdim=True)
    else:
        valid_g = valid.detach().bool().view_as(groups)
        top = groups.masked_fill(~valid_g, float("-inf")).max(dim=-1, keepdim=True).values
        bottom = groups.masked_fill(~valid_g, float("inf")).min(dim=-1, keepdim=True).values
        same = ~(top > bottom)
    return same.expand_as(groups).reshape(-1)


def group_filter_metrics(rewards: Tensor, group_size: int) -> dict[str, Stat]:
    """Sums and counts of the group filter, reducible across ranks by summing both (see ``loss.metrics``).

    Keys (each a fraction of groups): ``groups/all_equal`` (all rewards of the group equal),
    ``groups/all_correct`` (all equal and > 0) and ``groups/all_wrong`` (all equal and <= 0).
    """
    groups = _grouped(rewards.detach(), group_size)
    same = (groups == groups[:, :1]).all(dim=-1)
    n = torch.tensor(float(groups.shape[0]), dtype=torch.float64)
    first = groups[:, 0]
    return {
        "groups/all_equal": Stat(same.double().sum(), n),
        "groups/all_correct": Stat((same & (first > 0)).double().sum(), n),
        "groups/all_wrong": Stat((same & (first <= 0)).double().sum(), n),
    }
