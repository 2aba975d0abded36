"""``optim``: the student's optimizer and learning-rate schedule."""
from __future__ import annotations

from dataclasses import dataclass

from rlad_megatron.config.validators import ConfigError, at_least, greater_than, in_range


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-6
    """Peak learning rate (paper: 1e-6 for 1.7B-8B students)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay (0 <= min_lr <= lr)."""
    warmup_steps: int = 0
    """Steps of linear warm-up to lr before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (Megatron's DistributedOptimizer)."""

    def validate(self) -> None:
        greater_than("optim.lr", self.lr, 0)
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        at_least("optim.warmup_steps", self.warmup_steps, 0)
        at_least("optim.weight_decay", self.weight_decay, 0)
        in_range("optim.adam_beta1", self.adam_beta1, 0, 1, high_open=True)
        in_range("optim.adam_beta2", self.adam_beta2, 0, 1, high_open=True)
        in_range("optim.adam_eps", self.adam_eps, 0, 1, low_open=True)
        at_least("optim.clip_grad", self.clip_grad, 0)
