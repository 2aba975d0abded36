"""Stop a run that keeps producing non-finite losses or gradients, instead of corrupting its weights."""
from __future__ import annotations


class TrainingStopped(RuntimeError):
    pass


class NonFiniteStepGuard:
    """Counts consecutive steps with a skipped (non-finite) update; raises after ``max_consecutive`` of them."""

    def __init__(self, max_consecutive: int, checkpoint_hint: str = "") -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.checkpoint_hint = checkpoint_hint
        self.consecutive = 0

    def record(self, step: int, skipped_updates: int) -> None:
        if skipped_updates == 0:
            self.consecutive = 0
            return
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise TrainingStopped(
                f"step {step}: {self.consecutive} consecutive steps had non-finite losses or gradients; stopping "
                f"instead of corrupting the weights. Lower optim.lr, check the data, or raise "
                f"trainer.max_consecutive_bad_steps.{self.checkpoint_hint}"
            )
