"""The result type every reward function returns."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """The verdict on one completion.

    score: the scalar reward used for advantages (task-specific scale, e.g. Logic-RL's -3..3 or 0/1).
    correct: whether the final answer is right (what evaluation counts for Mean@k / Pass@k).
    format_ok: whether the completion followed the required output format (answer found/parsable).
    error: why the reward could not be computed (exception text or "timeout"); empty when it ran normally.
    """

    score: float
    correct: bool
    format_ok: bool
    error: str = ""

    @classmethod
    def failed(cls, error: str, score: float = 0.0) -> "RewardResult":
        """The result for a sample whose reward raised or timed out: reward 0, not correct, error recorded."""
        return cls(score=score, correct=False, format_ok=False, error=error)
