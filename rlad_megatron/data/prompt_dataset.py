"""Load prompt datasets through Hugging Face ``datasets``, validate them against a task, filter by prompt length.

One code path for every source (:mod:`rlad_megatron.data.sources`: local ``.jsonl``/``.json``/``.parquet``/
``.arrow`` files, ``save_to_disk`` and other dataset folders, ``hub:ORG/NAME``), each read on its own so that a
problem names its file and its row in that file. Each row goes through ``data.fields`` and the conversational
layouts (:func:`rlad_megatron.data.rows.prepare_row`), then ``task.to_record``, and is validated against
``task.schema``; bad rows (missing/empty/null fields, wrong types, invalid UTF-8, duplicate ids) either raise a
:class:`DatasetError` naming the file, row and field (``bad_rows="error"``) or are skipped and counted
(``bad_rows="skip"``). Prompts longer than ``max_prompt_tokens`` are skipped and counted (``over_budget="skip"``) or
raise (``over_budget="error"``). An empty result is always an error.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any, Mapping, Sequence

from rlad_megatron.data.rows import TEACHER_PASS_RATE, record_id, row_to_record
from rlad_megatron.data.sources import DatasetError, load_raw_dataset, rows_of
from rlad_megatron.tasks.base import RecordError, Task

__all__ = ["DatasetError", "LoadReport", "PromptDataset", "PromptExample", "TEACHER_PASS_RATE", "id_stem",
           "load_prompt_dataset", "load_raw_dataset", "record_id"]

_rows = rows_of  # the name rlad_megatron.eval.teacher_trust imports


def id_stem(source: str) -> str:
    """The prefix of the ids derived for rows without one: the file's (or folder's, or hub name's) stem."""
    return os.path.splitext(os.path.basename(source.rstrip("/")))[0]

@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One prompt ready for the rollout engine: the task record, the templated prompt text and its token ids."""

    record: dict[str, Any]
    prompt_text: str
    prompt_token_ids: list[int]

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclasses.dataclass
class LoadReport:
    """What happened while loading: counts of rows read, kept and skipped by reason, and the first messages."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    messages: list[str] = dataclasses.field(default_factory=list)
    max_prompt_tokens_seen: int = 0

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.messages) < 20:
            self.messages.append(message)

    def summary(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.source}: {self.rows} rows, kept {self.kept}, skipped: {parts}"

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped),
                "max_prompt_tokens_seen": self.max_prompt_tokens_seen, "messages": list(self.messages)}


@dataclasses.dataclass
class PromptDataset:
    """The validated, filtered prompts of one task (a list; sharding and order are :class:`PromptStream`'s job)."""

    task: Task
    examples: list[PromptExample]
    report: LoadReport

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> PromptExample:
        return self.examples[i]

    @property
    def records(self) -> list[dict[str, Any]]:
        return [e.record for e in self.examples]


def _describe(source: str | Sequence[str]) -> str:
    return source if isinstance(source, str) else ",".join(source)


def load_prompt_dataset(source: str | Sequence[str], task: Task, tokenizer: Any, max_prompt_tokens: int,
                        bad_rows: str = "error", over_budget: str = "skip", split: str = "train",
                        cache_dir: str | None = None, limit: int | None = None,
                        chat_template_kwargs: Mapping[str, Any] | None = None,
                        fields: Mapping[str, str] | None = None,
                        bad_rows_key: str = "data.bad_rows") -> PromptDataset:
    """Load, validate, template, tokenize and length-filter a prompt dataset for ``task``.

    ``source``: one source or a list (each read on its own; see :mod:`rlad_megatron.data.sources`). ``split``: the
    split of dataset folders and hub datasets (``data.split``; a file is read whole). ``fields``: the column
    mapping ``{target: source column or dotted path}`` (``data.fields``). ``chat_template_kwargs`` go to the
    tokenizer's chat template (e.g. ``{"enable_thinking": False}``). ``bad_rows_key``: the setting a bad row's
    error tells the user to change (``data.bad_rows``; ``eval`` passes ``--bad-rows``).

    Rows without an ``id`` get ``"<file stem>-<row>"``. ``limit`` keeps the first ``limit`` valid prompts.
    The returned dataset's ``report`` holds the counts (also worth logging with ``report.summary()``).
    """
    for opt, value in (("bad_rows", bad_rows), ("over_budget", over_budget)):
        if value not in ("error", "skip"):
            raise ValueError(f"{opt} must be 'error' or 'skip', got {value!r}")
    if max_prompt_tokens <= 0:
        raise ValueError(f"max_prompt_tokens must be > 0, got {max_prompt_tokens}")
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise DatasetError("no data files given")
    report = LoadReport(source=_describe(sources[0] if len(sources) == 1 else sources))
    seen: dict[str, tuple[str, int]] = {}
    examples: list[PromptExample] = []

    def reject(reason: str, name: str, row: int, field: str, what: str) -> None:
        msg = f"{name}: row {row} (0-based; line {row + 1} of a .jsonl), field {field!r}: {what}"
        if bad_rows == "error":
            raise DatasetError(msg + f" (fix the row, or drop such rows with {bad_rows_key}=skip)")
        report.skip(reason, msg)

    for name in sources:
        if limit is not None and len(examples) >= limit:
            break
        stem = id_stem(name)  # ids of rows without one: "<stem>-<row>"
        rows, bad_utf8 = rows_of(load_raw_dataset(name, split=split, cache_dir=cache_dir))
        report.rows += len(rows)
        for i, row in enumerate(rows):
            if limit is not None and len(examples) >= limit:
                break
            if i in bad_utf8:
                reject("invalid_utf8", name, i, bad_utf8[i], "is not valid UTF-8")
                continue
            try:
                record = row_to_record(task, row, fields, f"{stem}-{i}")
            except RecordError as exc:
                reason = "invalid_utf8" if "UTF-8" in exc.reason else "invalid"
                reject(reason, name, i, exc.field, exc.reason)
                continue
            if record["id"] in seen:
                first = seen[record["id"]]
                where = f"row {first[1]}" if first[0] == name else f"{first[0]} row {first[1]}"
                reject("duplicate_id", name, i, "id", f"duplicate id {record['id']!r} (first seen at {where})")
                continue
            seen[record["id"]] = (name, i)
            text = task.build_prompt(record, tokenizer, chat_template_kwargs)
            ids = task.encode_prompt(text, tokenizer)
            report.max_prompt_tokens_seen = max(report.max_prompt_tokens_seen, len(ids))
            if len(ids) > max_prompt_tokens:
                msg = (f"{name}: row {i}, field 'prompt': {len(ids)} prompt tokens > max_prompt_tokens="
                       f"{max_prompt_tokens}")
                if over_budget == "error":
                    raise DatasetError(msg + " (raise the budget, or set over_budget='skip' to drop long prompts)")
                report.skip("over_budget", msg)
                continue
            examples.append(PromptExample(record=record, prompt_text=text, prompt_token_ids=ids))
    report.kept = len(examples)
    if not examples:
        raise DatasetError(f"{report.source}: no prompts left after validation and length filtering "
                           f"({report.summary()}); first problems: {report.messages[:3]}")
    return PromptDataset(task=task, examples=examples, report=report)
