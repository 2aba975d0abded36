"""The step benchmark's task (workload W1, ``bench/step.py``): the sum of two numbers, answered directly.

Prompt (also the record's ``prompt``): ``"123+456="``. Reward: 1.0 when the completion's leading digits (the run of
decimal digits at its very start) equal the sum, else 0.0. Unlike the ``arithmetic`` demo task there is no chain of
thought and no ``####`` marker: a random model scores 0 nearly everywhere, which is what an equal-work throughput
benchmark wants (its groups are uniform, and the benchmark trains on them anyway).
"""
from __future__ import annotations

import random
import re
from typing import Any, Mapping

from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task
from rlad_megatron.rewards.base import RewardResult

_PROMPT_RE = re.compile(r"^(\d{1,30})\+(\d{1,30})=$")
_LEADING_DIGITS_RE = re.compile(r"^(\d{1,64})")


def generate_sum_records(n: int, seed: int, digits: int = 3) -> list[dict[str, Any]]:
    """``n`` records ``{"id", "prompt": "a+b=", "answer": str(a + b)}`` with two ``digits``-digit operands,
    deterministic in ``seed``."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    rng = random.Random(seed)
    low, high = (10 ** (digits - 1) if digits > 1 else 0), 10 ** digits - 1
    out = []
    for i in range(n):
        a, b = rng.randint(low, high), rng.randint(low, high)
        out.append({"id": f"sum-{i}", "prompt": f"{a}+{b}=", "answer": str(a + b)})
    return out


def leading_number(completion: str) -> str | None:
    """The decimal digits at the very start of ``completion`` (leading zeros stripped), or None if it starts
    with anything else."""
    match = _LEADING_DIGITS_RE.match(completion)
    if match is None:
        return None
    return match.group(1).lstrip("0") or "0"


class SumPrefixTask(Task):
    """``a+b=`` answered by the completion's leading digits. Reward 1.0 if they equal ``a+b``, else 0.0."""

    name = "sum_prefix"
    schema = BASE_SCHEMA

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in row.items() if v is not None}
        prompt, answer = record.get("prompt"), record.get("answer")
        if isinstance(prompt, str) and prompt and not _PROMPT_RE.match(prompt):
            raise RecordError("prompt", f"expected 'a+b=' with decimal a, b, got {prompt[:40]!r}")
        if isinstance(answer, int) and not isinstance(answer, bool):
            record["answer"] = str(answer)
        return record

    def user_message(self, record: Mapping[str, Any]) -> str:
        return str(record["prompt"])

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        got = leading_number(completion)
        want = str(record["answer"]).lstrip("0") or "0"
        ok = got == want
        return RewardResult(1.0 if ok else 0.0, correct=ok, format_ok=got is not None)
