"""``data``: the task, its training and evaluation files, the prompts of a step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlad_megatron.config.validators import ConfigError, at_least, choice
from rlad_megatron.tasks.registry import check_task_reference

BadRows = Literal["error", "skip"]


@dataclass
class DataConfig:
    """The task and its prompt files."""

    task: str = "arithmetic"
    """A built-in task ('arithmetic', 'knights_knaves', 'math', 'multiple_choice', ...) or your own code:
    'my_pkg.rewards:MyTask' (a Task subclass) or 'my_reward.py:my_reward' (a reward function, relative to this
    file's folder; docs/tasks_and_data.md)."""
    train_files: list[str] = field(default_factory=list)
    """jsonl/json/parquet/arrow/csv files, dataset folders (save_to_disk or hub layout), or hub:ORG/NAME[:CONFIG].
    Relative paths are taken from the config file's folder (from the working directory on the command line)."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out files of the periodic evaluation (see trainer.eval_every); empty: no evaluation."""
    fields: dict[str, str] = field(default_factory=dict)
    """Column mapping {field: column or dotted path}, e.g. {prompt: question, answer: reward_model.ground_truth}:
    the names the task reads, taken from your columns (the other columns stay on each record)."""
    split: str = "train"
    """Split of dataset folders and hub datasets in train_files (a file is read whole)."""
    eval_split: str | None = None
    """Split of dataset folders and hub datasets in eval_files; None: data.split."""
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
        for target, source in self.fields.items():
            if not target or not source or not isinstance(source, str):
                raise ConfigError(f"data.fields.{target}={source!r}: map a field name to a column name or dotted "
                                  "path, e.g. {prompt: question, answer: reward_model.ground_truth}")
        if not self.split or self.eval_split == "":
            raise ConfigError("data.split / data.eval_split: give a split name, e.g. train or test")
        problem = check_task_reference(self.task, resolve=False)  # its code is found where the job runs
        if problem:
            raise ConfigError(problem)
