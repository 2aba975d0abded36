"""A reward function of your own, as a task: ``data.task: my_rewards.py:my_reward`` (see tasks/registry.py).

The function's signature::

    def my_reward(completion: str, answer: str, record: dict, **options) -> float | bool | RewardResult

``completion`` is the response text (prompt excluded), ``answer`` the record's ``answer`` field (a string), ``record``
the whole record: every column of the dataset row (``data.fields`` applied), so a reward can read more than the
answer. ``options`` are the ``data.task_options`` that are not the task's own (below), passed as keyword arguments.

What the result means:
- a number: the reward; the sample counts as correct (Mean@k, Pass@k, ``reward/accuracy``) when it is at least
  ``correct_at`` (default 1.0);
- a bool: correct or not, reward 1.0 or 0.0;
- a :class:`rlad_megatron.rewards.base.RewardResult`: used as it is.
A non-finite number, another type or an exception gives reward 0 and counts in ``reward/errors``
(:class:`rlad_megatron.rewards.guard.RewardGuard`).

The task's own options (``data.task_options``): ``instruction`` (text appended to each prompt on a new line),
``system_prompt`` (used when a row has no system turn of its own), ``correct_at``. The prompt is the row's own
``prompt`` (after ``data.fields``; conversational rows keep their system and earlier turns).

The function runs in a worker process under the reward timeout (``rollout.reward_timeout_s``), since nothing bounds
the time code we did not write may take; a function that sets ``my_reward.may_hang = False`` runs inline instead
(faster; no timeout).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task

RewardFunction = Callable[..., Any]


class FunctionTask(Task):
    """The task of a user reward function: prompts from the data, the reward from ``fn``."""

    schema = BASE_SCHEMA

    def __init__(self, fn: RewardFunction, reference: str, *, instruction: str | None = None,
                 system_prompt: str | None = None, correct_at: float = 1.0, **reward_options: Any) -> None:
        try:
            inspect.signature(fn).bind("completion", "answer", {}, **reward_options)
        except TypeError as err:
            raise TypeError(f"{reference} cannot be called as {getattr(fn, '__name__', 'fn')}(completion, answer, "
                            f"record{''.join(f', {k}=...' for k in reward_options)}): {err}") from None
        except ValueError:  # builtins without a signature: called as they are
            pass
        self.fn = fn
        self.reference = reference
        self.name = getattr(fn, "__name__", reference)
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.correct_at = float(correct_at)
        self.reward_options = dict(reward_options)

    @property
    def reward_may_hang(self) -> bool:
        return bool(getattr(self.fn, "may_hang", True))

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in row.items() if v is not None}  # absent columns arrive as None
        answer = record.get("answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            record["answer"] = str(answer)
        elif answer is not None and not isinstance(answer, str):
            raise RecordError("answer", f"has type {type(answer).__name__}; a reward function receives the answer "
                                        "as text (map a text column with data.fields.answer=..., and read other "
                                        "columns from the record)")
        return record

    def user_message(self, record: Mapping[str, Any]) -> str:
        prompt = str(record["prompt"])
        return f"{prompt}\n{self.instruction}" if self.instruction else prompt

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        value = self.fn(completion, record["answer"], dict(record), **self.reward_options)
        if isinstance(value, RewardResult):
            return value
        if isinstance(value, bool):
            return RewardResult(1.0 if value else 0.0, correct=value, format_ok=True)
        if isinstance(value, (int, float)):
            score = float(value)  # NaN / inf are refused by the guard, counted as reward errors
            return RewardResult(score, correct=score >= self.correct_at, format_ok=True)
        raise TypeError(f"{self.reference} returned {type(value).__name__}; return a float, a bool or a RewardResult")
