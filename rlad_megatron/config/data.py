"""``data``: the task, its training and evaluation files, the prompts of a step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlad_megatron.config.validators import ConfigError, at_least, choice
from rlad_megatron.tasks.registry import task_names

BadRows = Literal["error", "skip"]


@dataclass
class DataConfig:
    """The task and its prompt files."""

    task: str = "arithmetic"
    """Task name (``rlad_megatron.tasks.registry.task_names()``): 'arithmetic', 'knights_knaves', 'math', ..."""
    train_files: list[str] = field(default_factory=list)
    """Local jsonl/parquet/arrow files, or one hub dataset name."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out files of the periodic evaluation (see trainer.eval_every); empty: no evaluation."""
    prompts_per_step: int = 8
    """Prompts per rollout batch (global, over all data-parallel replicas)."""
    max_prompt_tokens: int = 128
    """Prompts longer than this are filtered out (and counted)."""
    bad_rows: BadRows = "error"
    """"error": stop on a malformed row, naming file, row and field; "skip": drop it and count it."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task's constructor, for training, periodic evaluation (and `eval --task-option`), e.g.
    {fallbacks: true} for math. Training starts from the task's training defaults (math: answer fallbacks off)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the tokenizer's chat template for every prompt the student and the teacher see, e.g.
    {enable_thinking: false} for Qwen3's non-thinking mode (the eval CLI: --chat-template-kwarg)."""

    def validate(self) -> None:
        if not self.train_files:
            raise ConfigError("data.train_files: give at least one training file (jsonl/parquet/arrow)")
        at_least("data.prompts_per_step", self.prompts_per_step, 1)
        choice("data.bad_rows", self.bad_rows, BadRows)
        for name in ("task_options", "chat_template_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ConfigError(f"data.{name}: expected a mapping of names to values, got {value!r}")
        at_least("data.max_prompt_tokens", self.max_prompt_tokens, 1)
        if self.task not in task_names():
            raise ConfigError(f"data.task={self.task!r} is not a registered task; choose one of "
                              f"{', '.join(task_names())}")
