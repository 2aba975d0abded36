"""Policy losses of RLAD (TRRD) and its baselines: pure torch, no collectives.

Per-token losses (``[B, T]`` in and out): :func:`trrd_token_loss`, :func:`grpo_token_loss`, :func:`kl_estimate`.
Advantages: :func:`group_advantages`, :func:`equal_reward_groups`, :func:`group_filter_metrics`.
Reduction with global denominators: :func:`aggregate`, :class:`Denominators`, :func:`local_denominators`.
Truncated importance sampling of the engine/learner mismatch: :func:`tis_weights`.
Distribution terms over the teacher's top-k with a tail bucket: :func:`topk_kl`, :func:`masked_topk_kl`.
Teacher trust from its per-prompt pass rate: :func:`teacher_weights`, :func:`sequence_alpha`.
The trainer's entry: :func:`compute_policy_loss` with a :class:`LossConfig`; metrics via :class:`MetricAccumulator`.
"""

from rlad_megatron.loss.advantages import equal_reward_groups, group_advantages, group_filter_metrics
from rlad_megatron.loss.aggregation import Denominators, aggregate, local_denominators
from rlad_megatron.config.loss import LossConfig
from rlad_megatron.loss.distribution import masked_topk_kl, topk_kl
from rlad_megatron.loss.metrics import MetricAccumulator, Stat
from rlad_megatron.loss.policy_loss import compute_policy_loss, required_inputs
from rlad_megatron.loss.surrogates import (
    clipped_surrogate,
    grpo_token_loss,
    kl_estimate,
    trrd_log_ratio,
    trrd_token_loss,
)
from rlad_megatron.loss.tis import tis_weights
from rlad_megatron.loss.trust import sequence_alpha, teacher_weights

__all__ = [
    "Denominators",
    "LossConfig",
    "MetricAccumulator",
    "Stat",
    "aggregate",
    "clipped_surrogate",
    "compute_policy_loss",
    "equal_reward_groups",
    "group_advantages",
    "group_filter_metrics",
    "grpo_token_loss",
    "kl_estimate",
    "local_denominators",
    "masked_topk_kl",
    "required_inputs",
    "sequence_alpha",
    "teacher_weights",
    "tis_weights",
    "topk_kl",
    "trrd_log_ratio",
    "trrd_token_loss",
]
