"""The task abstraction: one object per task says what a record looks like, how to prompt, how to score.

The demo arithmetic task, Knights and Knaves and math all go through the same dataset loader
(:mod:`rlad_megatron.data.prompt_dataset`), the same reward guard and the same evaluation. Names map to tasks in
:mod:`rlad_megatron.tasks.registry`.

A *record* is a plain dict with at least ``id`` (str), ``prompt`` (the problem text, before any template) and
``answer`` (str); tasks declare more fields in ``schema``. ``Task.to_record`` turns a raw dataset row (e.g. a GSM8K
or Skywork-OR1 row) into a record, raising :class:`RecordError` naming the offending field.
"""
from __future__ import annotations

import abc
from typing import Any, Mapping

from rlad_megatron.rewards.base import RewardResult

#: The fields every task's records carry, with their types.
BASE_SCHEMA: dict[str, type | tuple[type, ...]] = {"id": str, "prompt": str, "answer": str}


class RecordError(ValueError):
    """A bad dataset row. ``field`` names the offending field; the loader adds the file and row."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def _type_name(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def validate_record(record: Mapping[str, Any], schema: Mapping[str, type | tuple[type, ...]]) -> None:
    """Check required fields: present, not None, of the declared type, and non-empty for str/list fields.

    Raises :class:`RecordError` for the first bad field. Strings holding U+FFFD (what invalid UTF-8 decodes to
    with replacement) are rejected too, so that a mis-encoded file is reported, not trained on.
    """
    for field, expected in schema.items():
        if field not in record:
            raise RecordError(field, "missing")
        value = record[field]
        if value is None:
            raise RecordError(field, "is null")
        if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
            raise RecordError(field, f"has type bool, expected {_type_name(expected)}")
        if not isinstance(value, expected):
            raise RecordError(field, f"has type {type(value).__name__}, expected {_type_name(expected)}")
        if isinstance(value, (str, list, tuple, dict)) and len(value) == 0:
            raise RecordError(field, "is empty")
        if isinstance(value, str) and "\ufffd" in value:
            raise RecordError(field, "contains invalid UTF-8 (U+FFFD replacement characters)")


class Task(abc.ABC):
    """A prompt/verifier pair. Subclasses set ``name`` and ``schema`` and implement the abstract methods.

    Tasks are small picklable objects (the reward may run in a worker process).
    """

    name: str = ""
    #: Required record fields and their types (always includes :data:`BASE_SCHEMA`).
    schema: Mapping[str, type | tuple[type, ...]] = BASE_SCHEMA
    #: Optional system message used when the tokenizer has a chat template.
    system_prompt: str | None = None
    #: Constructor options a training run starts from (``data.task_options`` override them): rewards that may
    #: credit what the model did not quite say (e.g. math's answer fallbacks) are off in training.
    training_options: Mapping[str, Any] = {}

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Turn a raw dataset row into a record (default: the row itself). Raise RecordError on bad rows."""
        return dict(row)

    @abc.abstractmethod
    def user_message(self, record: Mapping[str, Any]) -> str:
        """The user's turn: the problem with instructions (used inside a chat template)."""

    def plain_prompt(self, record: Mapping[str, Any]) -> str:
        """The whole prompt text for tokenizers without a chat template (default: the user message)."""
        return self.user_message(record)

    def build_prompt(self, record: Mapping[str, Any], tokenizer: Any,
                     chat_template_kwargs: Mapping[str, Any] | None = None) -> str:
        """The prompt text: the tokenizer's chat template when it has one, else :meth:`plain_prompt`.

        The system message is the record's own ``system`` (chat-format datasets carry one), else the task's
        ``system_prompt``; a conversation's earlier turns (the record's ``history``, see
        :mod:`rlad_megatron.data.rows`) come between it and the user's turn. ``chat_template_kwargs`` go to
        ``apply_chat_template`` (``data.chat_template_kwargs``, e.g. ``{"enable_thinking": False}`` for Qwen3's
        non-thinking mode).
        """
        system = record.get("system") or self.system_prompt
        history = list(record.get("history") or [])
        if getattr(tokenizer, "chat_template", None):
            messages = []
            if system:
                messages.append({"role": "system", "content": system})
            messages += [{"role": t["role"], "content": t["content"]} for t in history]
            messages.append({"role": "user", "content": self.user_message(record)})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 **dict(chat_template_kwargs or {}))
        # No roles without a template: the dataset's system text, then the earlier turns' text, go first.
        lead = [record["system"]] if record.get("system") else []
        lead += [t["content"] for t in history]
        return "\n\n".join([*lead, self.plain_prompt(record)])

    def encode_prompt(self, prompt_text: str, tokenizer: Any) -> list[int]:
        """Token ids of a built prompt. Chat-template text already holds its special tokens (no second bos)."""
        add_special = not getattr(tokenizer, "chat_template", None)
        return list(tokenizer(prompt_text, add_special_tokens=add_special)["input_ids"])

    @abc.abstractmethod
    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        """Score one completion (the response text only, prompt excluded) against the record."""

    def difficulty(self, record: Mapping[str, Any]) -> str:
        """A label for per-difficulty tables (default: the record's ``difficulty`` field, else "all")."""
        value = record.get("difficulty")
        return "all" if value is None or value == "" else str(value)

    @property
    def reward_may_hang(self) -> bool:
        """Whether the reward needs a timeout sandbox (see :class:`rlad_megatron.rewards.guard.RewardGuard`)."""
        return False
