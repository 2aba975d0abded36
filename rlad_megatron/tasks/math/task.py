"""The math task: record layouts of the paper's math data and of GSM8K / MATH style files, and the prompt.

Accepted row layouts (converted by :meth:`MathTask.to_record`):
- canonical: ``prompt`` (str), ``answer`` (str or number), optional ``id``, ``difficulty``;
- GSM8K: ``question`` + ``answer`` whose last line is ``#### 72`` (the number after ``####`` becomes the answer);
- MATH / MATH-500: ``problem`` + ``answer``, or ``problem`` + ``solution`` (the last ``\\boxed{}`` of the solution);
  ``level`` becomes the difficulty;
- Skywork-OR1 / verl: ``reward_model.ground_truth`` a list of acceptable answers or a JSON string of one,
  ``data_source`` the difficulty label, ``extra_info.index`` the id when there is no ``id``;
- TRL: ``solution`` the final answer (or a text with a ``\\boxed{}`` one) when there is no ``answer``.
Chat prompts (a list of turns, or a ``messages`` conversation whose last assistant turn is the reference) are split
by the loader first (:mod:`rlad_megatron.data.rows`). An ``answer`` may be a list of alternatives; an answer text
with a ``\\boxed{}`` (a reference reply) or a ``####`` gives its final answer. Alternative acceptable answers are
kept in ``answers`` (list[str]); the reward accepts any of them.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task
from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.tasks.math.reward import MathRewardConfig, extract_boxed, math_reward

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def _as_answer(value: Any, field: str) -> str:
    if isinstance(value, bool):
        raise RecordError(field, "has type bool, expected str or number")
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(field, f"has type {type(value).__name__}, expected str or number")
    return value.strip()


def _ground_truths(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value.strip()]
        value = parsed if isinstance(parsed, list) else [value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordError("reward_model.ground_truth", "expected a non-empty list of answers or a JSON string of one")
    return [_as_answer(v, "reward_model.ground_truth") for v in value]


def _final_answer(text: str) -> str:
    """The gold answer in a reference text: its last \\boxed{}, else what follows a GSM8K-style ``####``, else the
    text itself."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    return text.strip()


def _answers(value: Any, field: str) -> list[str]:
    """Acceptable answers of an ``answer`` cell: one (str or number; a reference text gives its final answer) or a
    list of alternatives."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise RecordError(field, "is an empty list")
    return [_final_answer(_as_answer(v, field)) for v in values]


class MathTask(Task):
    """Competition / grade-school math with a ``\\boxed{}`` answer, scored through math-verify."""

    name = "math"
    schema = {**BASE_SCHEMA, "answers": list}
    #: A cut-off thinking trace ("... counting: 1, 2, 3, 4, 5") must not score through the "answer is" or
    #: last-number fallbacks: training asks for the \\boxed{} answer the prompt requests.
    training_options = {"fallbacks": False}

    def __init__(self, **reward_options: Any) -> None:
        self.reward_config = MathRewardConfig(**reward_options)

    @property
    def reward_may_hang(self) -> bool:
        return True  # sympy inside math-verify has no time bound of its own

    def warmup(self) -> None:
        """Import math-verify/sympy and run one comparison (called once in the reward worker)."""
        math_reward("\\boxed{\\frac{1}{2}}", ["0.5"], self.reward_config)

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        rec = {k: v for k, v in row.items() if v is not None}  # absent columns arrive as None
        answers: list[str] | None = None
        if "question" in rec and "prompt" not in rec:  # GSM8K
            rec["prompt"] = rec["question"]
            full = _as_answer(rec.get("answer"), "answer") if "answer" in rec else ""
            if "####" not in full:
                raise RecordError("answer", "GSM8K layout needs '#### <number>' at the end of the answer")
            answers = [full.rsplit("####", 1)[1].strip().replace(",", "")]
            rec.setdefault("difficulty", "gsm8k")
        elif "problem" in rec and "prompt" not in rec:  # MATH / MATH-500 / AIME style
            rec["prompt"] = rec["problem"]
            if "answer" in rec:
                answers = _answers(rec["answer"], "answer")
            elif isinstance(rec.get("solution"), str):
                boxed = extract_boxed(rec["solution"])
                if boxed is None:
                    raise RecordError("solution", "no \\boxed{} answer in the solution")
                answers = [boxed]
            else:
                raise RecordError("answer", "missing (and no 'solution' to take a \\boxed{} answer from)")
            if rec.get("level") is not None:
                rec.setdefault("difficulty", str(rec["level"]))
        elif "answer" in rec:  # canonical (also a conversation's reference reply, data.fields.answer=...)
            answers = _answers(rec["answer"], "answer")
        elif "reward_model" in rec:  # verl / Skywork-OR1
            rm = rec["reward_model"]
            if not isinstance(rm, dict) or rm.get("ground_truth") is None:
                raise RecordError("reward_model.ground_truth", "missing")
            answers = _ground_truths(rm["ground_truth"])
            rec.setdefault("difficulty", rec.get("data_source"))
            extra = rec.get("extra_info")
            if "id" not in rec and isinstance(extra, dict) and extra.get("index") is not None:
                rec["id"] = str(extra["index"])
        elif isinstance(rec.get("solution"), str):  # TRL math sets: the final answer (or a solution with \\boxed{})
            answers = [_final_answer(rec["solution"])]
        if answers is not None:
            if not all(answers):
                raise RecordError("answer", "is empty")
            rec["answer"], rec["answers"] = answers[0], answers
        return rec

    def user_message(self, record: Mapping[str, Any]) -> str:
        prompt = str(record["prompt"])
        return prompt if "\\boxed" in prompt else f"{prompt}\n{INSTRUCTION}"

    def plain_prompt(self, record: Mapping[str, Any]) -> str:
        return f"Problem: {self.user_message(record)}\nSolution:"

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        golds = list(record.get("answers") or [record["answer"]])
        return math_reward(completion, [str(g) for g in golds], self.reward_config)
