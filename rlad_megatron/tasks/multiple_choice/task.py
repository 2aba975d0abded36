"""The multiple-choice task: a question, lettered choices, the letter of the right one.

Accepted row layouts (:meth:`MultipleChoiceTask.to_record`):
- canonical: ``prompt`` (or ``question``), ``choices`` (a list of 2-26 texts, kept in their order) and ``answer``:
  the letter (``"C"``), the 0-based index (``2``) or the text of the right choice;
- ``correct`` (the right choice's text) + ``incorrect`` (a list of the others): the choices are shuffled;
- GPQA (``Idavidrein/gpqa``): ``Question``, ``Correct Answer``, ``Incorrect Answer 1`` .. ``3`` (shuffled),
  ``Record ID`` the id, ``High-level domain`` (else ``Subdomain``) the difficulty label.
Shuffling is reproducible from the record alone: the order comes from a SHA-256 of the task's ``seed`` option and
the record's id (its question when it has none), the same in every process, run and machine.

The record holds ``prompt`` (the question), ``choices`` (in the order shown), ``answer`` (the right letter) and
``answer_text``. The reward (``reward.py``) finds the letter the response chose.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Mapping

from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task
from rlad_megatron.tasks.multiple_choice.reward import LETTERS, choice_reward

_GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def shuffled(correct: str, incorrect: list[str], key: str, seed: int = 0) -> tuple[list[str], str]:
    """(choices, letter of ``correct``): the choices in an order fixed by ``(seed, key)``."""
    choices = [correct, *incorrect]
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()
    order = list(range(len(choices)))
    random.Random(int(digest[:16], 16)).shuffle(order)
    shown = [choices[i] for i in order]
    return shown, LETTERS[order.index(0)]


def _texts(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        raise RecordError(field, "expected a list of choice texts")
    texts = [str(v).strip() for v in value]
    if any(not t for t in texts):
        raise RecordError(field, "holds an empty choice")
    return texts


class MultipleChoiceTask(Task):
    """Lettered choices; reward ``correct`` for the right letter, ``wrong`` for another, ``no_answer`` for none."""

    name = "multiple_choice"
    schema = {**BASE_SCHEMA, "choices": list}

    def __init__(self, correct: float = 1.0, wrong: float = 0.0, no_answer: float = 0.0, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.correct, self.wrong, self.no_answer = float(correct), float(wrong), float(no_answer)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        rec = {k: v for k, v in row.items() if v is not None}  # absent columns arrive as None
        if "Question" in rec and "Correct Answer" in rec:  # GPQA
            rec.setdefault("prompt", rec["Question"])
            rec.setdefault("correct", rec["Correct Answer"])
            rec.setdefault("incorrect", [rec[k] for k in _GPQA_WRONG if k in rec])
            if rec.get("Record ID") is not None:
                rec.setdefault("id", str(rec["Record ID"]))
            label = rec.get("High-level domain") or rec.get("Subdomain")
            if label:
                rec.setdefault("difficulty", str(label))
        if "prompt" not in rec and isinstance(rec.get("question"), str):
            rec["prompt"] = rec["question"]
        if "choices" not in rec and "correct" in rec:
            correct = _texts([rec["correct"]], "correct")[0]
            incorrect = _texts(rec.get("incorrect"), "incorrect")
            if not incorrect:
                raise RecordError("incorrect", "needs at least one wrong choice")
            if self.shuffle:
                key = str(rec.get("id") or rec.get("prompt") or "")
                rec["choices"], rec["answer"] = shuffled(correct, incorrect, key, self.seed)
            else:
                rec["choices"], rec["answer"] = [correct, *incorrect], "A"
        if "choices" in rec:
            choices = _texts(rec["choices"], "choices")
            if not 2 <= len(choices) <= len(LETTERS):
                raise RecordError("choices", f"needs 2 to {len(LETTERS)} choices, got {len(choices)}")
            rec["choices"] = choices
            if "answer" in rec:
                rec["answer"] = self._letter(rec["answer"], choices)
                rec["answer_text"] = choices[LETTERS.index(rec["answer"])]
        return rec

    @staticmethod
    def _letter(answer: Any, choices: list[str]) -> str:
        n = len(choices)
        if isinstance(answer, int) and not isinstance(answer, bool):
            if 0 <= answer < n:
                return LETTERS[answer]
            raise RecordError("answer", f"index {answer} is outside the {n} choices (0-based)")
        if isinstance(answer, str):
            text = answer.strip()
            letter = text.strip("()").upper()
            if len(letter) == 1 and letter in LETTERS[:n]:
                return letter
            matches = [i for i, c in enumerate(choices) if c == text]
            if len(matches) == 1:
                return LETTERS[matches[0]]
            raise RecordError("answer", f"{text[:60]!r} is neither a letter A-{LETTERS[n - 1]} nor the text of one "
                                        "choice")
        raise RecordError("answer", f"has type {type(answer).__name__}; give a letter, a 0-based index or the "
                                    "choice's text")

    def user_message(self, record: Mapping[str, Any]) -> str:
        choices = record["choices"]
        letters = LETTERS[:len(choices)]
        lines = [str(record["prompt"]).strip(), ""]
        lines += [f"{letter}) {text}" for letter, text in zip(letters, choices)]
        lines += ["", f"Think it through, then end your response with a line of the form 'Answer: X', where X is "
                      f"one of {', '.join(letters)}."]
        return "\n".join(lines)

    def plain_prompt(self, record: Mapping[str, Any]) -> str:
        return f"Question: {self.user_message(record)}\nResponse:"

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        return choice_reward(completion, str(record["answer"]), list(record["choices"]), self.correct, self.wrong,
                             self.no_answer)
