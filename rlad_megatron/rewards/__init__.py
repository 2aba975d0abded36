"""Rule-based verifiers: pure functions (completion text, record) -> RewardResult, and the guard that runs them."""
from rlad_megatron.rewards.base import RewardResult

__all__ = ["RewardResult"]
