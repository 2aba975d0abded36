"""The CPU demo task: multi-digit addition with a short, digit-wise chain of thought.

Prompt (also the record's ``prompt``):   ``"345+78="``
Reference completion (the teacher's SFT target), least significant digit first, one line per column
``a+b+carry=sum``, then the answer after ``#### ``, then ``<eos>`` (a token, not text)::

    5+8+0=13
    4+7+1=12
    3+0+1=4
    #### 423

Every character is in the char tokenizer's alphabet. Difficulty is the number of digits of the longer operand
(``"d1"`` .. ``"d6"``): longer numbers mean longer chains with more carries to track, which a tiny teacher learns and a
much smaller student does not (it has to copy the right column digits and reverse the partial sums at the end).
"""
from __future__ import annotations

import random
import re
from typing import Any, Mapping

from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task
from rlad_megatron.rewards.base import RewardResult

_PROMPT_RE = re.compile(r"^(\d{1,30})\+(\d{1,30})=$")
_ANSWER_RE = re.compile(r"####[ ]?(\d{1,64})")


def reference_cot(a: int, b: int) -> str:
    """The reference chain of thought and answer for ``a+b`` (no eos)."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a}, {b}")
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    lines, carry = [], 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s}")
        carry = s // 10
    lines.append(f"#### {a + b}")
    return "\n".join(lines)


def make_record(a: int, b: int, record_id: str) -> dict[str, Any]:
    """One record: ``id``, ``prompt`` ("a+b="), ``answer`` (str), ``difficulty`` ("d<digits of longer operand>")."""
    return {"id": record_id, "prompt": f"{a}+{b}=", "answer": str(a + b),
            "difficulty": f"d{max(len(str(a)), len(str(b)))}"}


def generate_records(n: int, seed: int, min_digits: int = 1, max_digits: int = 5,
                     id_prefix: str = "add") -> list[dict[str, Any]]:
    """``n`` addition records, deterministic in ``seed``, difficulty uniform over ``min_digits..max_digits``.

    The longer operand has exactly ``d`` digits; the other has 1..d digits (order random).
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = rng.randint(min_digits, max_digits)
        e = rng.randint(1, d)
        a = rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)
        b = rng.randint(10 ** (e - 1) if e > 1 else 0, 10 ** e - 1)
        if rng.random() < 0.5:
            a, b = b, a
        out.append(make_record(a, b, f"{id_prefix}-{i}"))
    return out


def parse_answer(completion: str) -> str | None:
    """The integer after the last ``####`` (leading zeros stripped), or None when there is none."""
    matches = _ANSWER_RE.findall(completion)
    if not matches:
        return None
    return matches[-1].lstrip("0") or "0"


class ArithmeticTask(Task):
    """Multi-digit addition (the CPU demo). Reward: ``correct_score`` when the ``####`` answer is right,
    ``wrong_score`` when an answer is given but wrong, ``no_answer_score`` when no ``####`` answer is found."""

    name = "arithmetic"
    schema = {**BASE_SCHEMA, "difficulty": str}

    def __init__(self, correct_score: float = 1.0, wrong_score: float = 0.0, no_answer_score: float = 0.0) -> None:
        self.correct_score = correct_score
        self.wrong_score = wrong_score
        self.no_answer_score = no_answer_score

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in row.items() if v is not None}  # absent columns arrive as None
        prompt, answer = record.get("prompt"), record.get("answer")
        if isinstance(prompt, str) and prompt and not _PROMPT_RE.match(prompt):
            raise RecordError("prompt", f"expected 'a+b=' with decimal a, b, got {prompt[:40]!r}")
        if isinstance(answer, int) and not isinstance(answer, bool):
            record["answer"] = str(answer)
        if isinstance(prompt, str) and "difficulty" not in record and _PROMPT_RE.match(prompt):
            a, b = _PROMPT_RE.match(prompt).groups()
            record["difficulty"] = f"d{max(len(a), len(b))}"
        return record

    def user_message(self, record: Mapping[str, Any]) -> str:
        return str(record["prompt"])

    def reference_completion(self, record: Mapping[str, Any]) -> str:
        """The SFT target text for the teacher's pre-training (append the eos token when tokenizing)."""
        m = _PROMPT_RE.match(str(record["prompt"]))
        if m is None:
            raise ValueError(f"record {record.get('id')!r}: prompt {record['prompt']!r} is not 'a+b='")
        return reference_cot(int(m.group(1)), int(m.group(2)))

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        got = parse_answer(completion)
        if got is None:
            return RewardResult(self.no_answer_score, correct=False, format_ok=False)
        want = str(record["answer"]).lstrip("0") or "0"
        ok = got == want
        return RewardResult(self.correct_score if ok else self.wrong_score, correct=ok, format_ok=True)
