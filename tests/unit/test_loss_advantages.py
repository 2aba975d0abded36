"""GRPO group advantages and the equal-reward group filter vs plain Python."""

from __future__ import annotations

import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlad_megatron.loss import MetricAccumulator, equal_reward_groups, group_advantages, group_filter_metrics


def _ref(rewards: list[float], g: int, normalize_std: bool) -> list[float]:
    out = []
    for start in range(0, len(rewards), g):
        grp = rewards[start:start + g]
        mu = sum(grp) / g
        sd = statistics.pstdev(grp)
        out += [(r - mu) / (sd + 1e-6) if normalize_std else r - mu for r in grp]
    return out


@settings(max_examples=60, deadline=None)
@given(
    g=st.integers(1, 6), n_groups=st.integers(1, 4), normalize=st.booleans(),
    data=st.data(),
)
def test_group_advantages_match_python(g, n_groups, normalize, data):
    rewards = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.5]), min_size=g * n_groups,
                                 max_size=g * n_groups))
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64), g, normalize_std=normalize)
    assert adv.tolist() == pytest.approx(_ref(rewards, g, normalize), rel=1e-9, abs=1e-9)
    same = equal_reward_groups(torch.tensor(rewards), g)
    for i, flag in enumerate(same.tolist()):
        grp = rewards[(i // g) * g:(i // g + 1) * g]
        assert flag == (len(set(grp)) == 1)
        if flag:
            assert adv[i].item() == 0.0


def test_integer_rewards_and_known_values():
    adv = group_advantages(torch.tensor([1, 0, 0, 0]), 4)
    assert adv.dtype == torch.float32
    # mean 0.25, population std sqrt(3)/4
    assert adv.tolist() == pytest.approx([0.75 / (3 ** 0.5 / 4 + 1e-6), -0.25 / (3 ** 0.5 / 4 + 1e-6)] + [
        -0.25 / (3 ** 0.5 / 4 + 1e-6)] * 2, rel=1e-6)


def test_filter_metrics_reduce_across_splits():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # 4 groups of 3
    whole = MetricAccumulator()
    whole.add(group_filter_metrics(rewards, 3))
    split = MetricAccumulator()
    split.add(group_filter_metrics(rewards[:3], 3))
    split.add(group_filter_metrics(rewards[3:], 3))
    assert whole.finalize() == split.finalize()
    assert whole.finalize() == {"groups/all_correct": 0.25, "groups/all_equal": 0.5, "groups/all_wrong": 0.25}


def test_errors_name_the_input():
    with pytest.raises(ValueError, match="not a multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        group_advantages(torch.zeros(6), 0)
    with pytest.raises(ValueError, match="rewards must be flat"):
        group_advantages(torch.zeros(2, 3), 3)
