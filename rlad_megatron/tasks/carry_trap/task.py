"""``carry_trap``: the arithmetic demo's additions (same prompt, chain of thought and verifier), built to compare
distillation methods where imitating the teacher is not always right.

The verifier checks the true sum, as in ``arithmetic``. What differs is the teacher's training: with
``reference="flawed"`` the reference completion (the supervised teacher's target) drops the final carry, the
classic systematic error: every column line is right, but the answer leaves out the leading ``1``::

    57+68=   ->   7+8+0=15
                  5+6+1=12
                  #### 25        (correct: #### 125)

A teacher trained on it is right on every problem whose sum has no more digits than its longer operand (``plain``)
and wrong on every one whose sum does (``carry``); the difficulty label is that subset, so every report splits by
it. The subset is recognizable from the prompt, and the verifier can tell: per prompt, the teacher's pass rate is
about 1 on ``plain`` and 0 on ``carry``. Blind imitation (sft on the teacher's samples, RLAD without trust) learns
nothing or the wrong thing on ``carry``; RL from the verifier can learn it; trust gated by the verifier should keep
the teacher's help on ``plain`` and GRPO's on ``carry``.
"""
from __future__ import annotations

import random
import re
from typing import Any, Mapping

from rlad_megatron.tasks.arithmetic.task import ArithmeticTask, reference_cot

_PROMPT_RE = re.compile(r"^(\d{1,30})\+(\d{1,30})=$")
REFERENCES: tuple[str, ...] = ("correct", "flawed")


def carries_out(a: int, b: int) -> bool:
    """Whether ``a + b`` has more digits than the longer operand (the last column carries out)."""
    return len(str(a + b)) > max(len(str(a)), len(str(b)))


def flawed_cot(a: int, b: int) -> str:
    """The flawed teacher's completion: the reference chain of thought with the final carry dropped from the answer."""
    lines = reference_cot(a, b).split("\n")
    width = max(len(str(a)), len(str(b)))
    lines[-1] = f"#### {(a + b) % 10 ** width}"
    return "\n".join(lines)


def make_record(a: int, b: int, record_id: str) -> dict[str, Any]:
    """``id``, ``prompt`` ("a+b="), ``answer`` (the true sum) and ``difficulty`` (``carry`` or ``plain``)."""
    return {"id": record_id, "prompt": f"{a}+{b}=", "answer": str(a + b),
            "difficulty": "carry" if carries_out(a, b) else "plain"}


def generate_records(n: int, seed: int, min_digits: int = 1, max_digits: int = 3, carry_fraction: float | None = None,
                     id_prefix: str = "add") -> list[dict[str, Any]]:
    """``n`` records, deterministic in ``seed``: operands as in ``arithmetic`` (the longer one has ``d`` digits,
    ``d`` uniform in ``min_digits..max_digits``), with ``carry_fraction`` of them carrying out (drawn by
    rejection; ``None``: as they come, about a third at 1..3 digits)."""
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if carry_fraction is not None and not 0.0 <= carry_fraction <= 1.0:
        raise ValueError(f"carry_fraction must be in [0, 1] or None, got {carry_fraction!r}")
    rng = random.Random(seed)

    def draw() -> tuple[int, int]:
        d = rng.randint(min_digits, max_digits)
        e = rng.randint(1, d)
        a = rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)
        b = rng.randint(10 ** (e - 1) if e > 1 else 0, 10 ** e - 1)
        return (b, a) if rng.random() < 0.5 else (a, b)

    out: list[dict[str, Any]] = []
    while len(out) < n:
        a, b = draw()
        if carry_fraction is not None:
            want = rng.random() < carry_fraction  # the subset first, then operands until they fall in it
            while carries_out(a, b) != want:
                a, b = draw()
        out.append(make_record(a, b, f"{id_prefix}-{len(out)}"))
    return out


class CarryTrapTask(ArithmeticTask):
    """Addition with a chain of thought; reward as ``arithmetic`` (the true sum). ``reference="flawed"`` makes
    :meth:`reference_completion` the flawed teacher's target (final carry dropped); ``"correct"`` the true one."""

    name = "carry_trap"

    def __init__(self, reference: str = "correct", correct_score: float = 1.0, wrong_score: float = 0.0,
                 no_answer_score: float = 0.0) -> None:
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {list(REFERENCES)}, got {reference!r}")
        super().__init__(correct_score=correct_score, wrong_score=wrong_score, no_answer_score=no_answer_score)
        self.reference = reference

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = super().to_record(row)
        m = _PROMPT_RE.match(str(record.get("prompt", "")))
        if m is not None:  # the subset comes from the prompt, whatever the file says
            record["difficulty"] = "carry" if carries_out(int(m.group(1)), int(m.group(2))) else "plain"
        return record

    def reference_completion(self, record: Mapping[str, Any]) -> str:
        if self.reference == "correct":
            return super().reference_completion(record)
        m = _PROMPT_RE.match(str(record["prompt"]))
        if m is None:
            raise ValueError(f"record {record.get('id')!r}: prompt {record['prompt']!r} is not 'a+b='")
        return flawed_cot(int(m.group(1)), int(m.group(2)))
