"""Load prompt datasets through Hugging Face ``datasets``, validate them against a task, filter by prompt length.

One code path for every source: a local ``.jsonl``/``.json``/``.parquet``/``.arrow`` file (or a list of them) goes to
``load_dataset(<builder>, data_files=...)``, anything else is treated as a hub dataset name for
``load_dataset(name)``. Each row is converted with ``task.to_record`` and validated against ``task.schema``; bad rows
(missing/empty/null fields, wrong types, invalid UTF-8, duplicate ids) either raise a :class:`DatasetError` naming the
file, row and field (``bad_rows="error"``) or are skipped and counted (``bad_rows="skip"``). Prompts longer than
``max_prompt_tokens`` are skipped and counted (``over_budget="skip"``) or raise (``over_budget="error"``). An empty
result is always an error.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any, Mapping, Sequence

from rlad_megatron.tasks.base import RecordError, Task, validate_record

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}

TEACHER_PASS_RATE = "teacher_pass_rate"
"""Optional record field: the fraction of the teacher's own samples the verifier marks correct on this prompt
(written by ``rlad-megatron teacher-trust``, read by ``loss.teacher_trust``); a number in [0, 1] when present."""


class DatasetError(ValueError):
    """A dataset problem, with the file (or hub name), 0-based row and field when they are known."""


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


def load_raw_dataset(source: str | Sequence[str], split: str = "train", cache_dir: str | None = None) -> Any:
    """``datasets.Dataset`` for local files (builder chosen by extension), a local dataset folder or a hub name.

    Folders and hub names both go through ``load_dataset(name_or_folder, split=split)``.
    """
    import datasets

    files = [source] if isinstance(source, str) else list(source)
    local = [f for f in files if os.path.exists(f)]
    try:
        if len(files) == 1 and os.path.isdir(files[0]):  # a local dataset folder: same call as a hub name
            return datasets.load_dataset(files[0], split=split, cache_dir=cache_dir)
        if local:
            missing = [f for f in files if f not in local]
            if missing:
                raise DatasetError(f"data files not found: {missing}")
            empty = [f for f in files if os.path.isfile(f) and _is_empty(f)]
            if empty:
                raise DatasetError(f"data file {empty[0]} is empty: no rows to load")
            exts = {os.path.splitext(f)[1].lower() for f in files}
            builders = {_BUILDERS.get(e) for e in exts}
            if None in builders or len(builders) != 1:
                raise DatasetError(f"{_describe(source)}: unsupported or mixed file types {sorted(exts)}; "
                                   f"use one of {sorted(_BUILDERS)}")
            return datasets.load_dataset(builders.pop(), data_files=files, split=split, cache_dir=cache_dir)
        if len(files) != 1 or files[0].endswith(tuple(_BUILDERS)):
            raise DatasetError(f"data file not found: {_describe(source)}")
        return datasets.load_dataset(files[0], split=split, cache_dir=cache_dir)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the source named
        where = "".join(_diagnose_json_lines(f) for f in files if f.lower().endswith(".jsonl"))
        raise DatasetError(f"{_describe(source)}: could not load with `datasets` "
                           f"({type(exc).__name__}: {str(exc)[:300]}){where}") from exc


def _is_empty(path: str) -> bool:
    """A file with no bytes, or (JSON / JSON lines) only whitespace: `datasets` fails on it with a bare
    StopIteration."""
    size = os.path.getsize(path)
    if size == 0:
        return True
    if not path.lower().endswith((".jsonl", ".json")) or size > 1 << 20:
        return False
    with open(path, "rb") as fh:
        return not fh.read().strip()


def _diagnose_json_lines(path: str) -> str:
    """After a failed load: the first line of a .jsonl file that is not valid UTF-8 or not valid JSON."""
    import json

    try:
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return f"; {path} line {lineno} (row {lineno - 1}): invalid UTF-8 at byte {exc.start}"
                if text.strip():
                    try:
                        json.loads(text)
                    except ValueError as exc:
                        return f"; {path} line {lineno} (row {lineno - 1}): invalid JSON ({exc})"
    except OSError:
        return ""
    return ""


def _rows(ds: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The rows as Python dicts, and {row: field} for cells whose bytes are not valid UTF-8.

    pyarrow's JSON reader keeps invalid UTF-8 bytes in string columns; decoding fails only on access. The normal
    path is ``ds.to_list()``; only when that fails are the columns read cell by cell to find the bad rows.
    """
    try:
        return ds.to_list(), {}
    except UnicodeDecodeError:
        pass
    table = ds.data.table
    columns: dict[str, list[Any]] = {}
    bad: dict[int, str] = {}
    for name in table.column_names:
        col = table.column(name)
        try:
            columns[name] = col.to_pylist()
        except UnicodeDecodeError:
            values = []
            for i in range(table.num_rows):
                try:
                    values.append(col[i].as_py())
                except UnicodeDecodeError:
                    values.append(None)
                    bad.setdefault(i, name)
            columns[name] = values
    rows = [{name: columns[name][i] for name in columns} for i in range(table.num_rows)]
    # Undo the dataset's own encoding of the good rows (e.g. ``Json`` feature columns hold JSON text).
    rows = [r if i in bad else ds.features.decode_example(r) for i, r in enumerate(rows)]
    return rows, bad


def id_stem(source: str | Sequence[str]) -> str:
    """The prefix of derived ids: the file (or folder / hub name) stem, ``row`` for a list of files."""
    if not isinstance(source, str) and len(source) == 1:
        source = source[0]
    return os.path.splitext(os.path.basename(source.rstrip("/")))[0] if isinstance(source, str) else "row"


def record_id(value: Any, stem: str, row: int) -> Any:
    """The id a record gets: its own (an int becomes a str), else ``"<stem>-<row>"`` (stable across loads; ``row``
    counts across all files when there are several)."""
    if value is None:
        return f"{stem}-{row}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_pass_rate(record: Mapping[str, Any]) -> None:
    value = record.get(TEACHER_PASS_RATE)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RecordError(TEACHER_PASS_RATE, f"must be a number in [0, 1] (a fraction of correct teacher samples), "
                                             f"got {value!r}")


def load_prompt_dataset(source: str | Sequence[str], task: Task, tokenizer: Any, max_prompt_tokens: int,
                        bad_rows: str = "error", over_budget: str = "skip", split: str = "train",
                        cache_dir: str | None = None, limit: int | None = None,
                        chat_template_kwargs: Mapping[str, Any] | None = None) -> PromptDataset:
    """Load, validate, template, tokenize and length-filter a prompt dataset for ``task``.

    ``chat_template_kwargs`` go to the tokenizer's chat template (e.g. ``{"enable_thinking": False}``).

    Rows without an ``id`` get ``"<file stem>-<row>"``. ``limit`` keeps the first ``limit`` valid prompts.
    The returned dataset's ``report`` holds the counts (also worth logging with ``report.summary()``).
    """
    for opt, value in (("bad_rows", bad_rows), ("over_budget", over_budget)):
        if value not in ("error", "skip"):
            raise ValueError(f"{opt} must be 'error' or 'skip', got {value!r}")
    if max_prompt_tokens <= 0:
        raise ValueError(f"max_prompt_tokens must be > 0, got {max_prompt_tokens}")
    if not isinstance(source, str) and len(source) == 1:
        source = source[0]
    name = _describe(source)
    stem = id_stem(source)
    rows, bad_utf8 = _rows(load_raw_dataset(source, split=split, cache_dir=cache_dir))
    report = LoadReport(source=name, rows=len(rows))
    seen: dict[str, int] = {}
    examples: list[PromptExample] = []

    def reject(reason: str, row: int, field: str, what: str) -> None:
        msg = f"{name}: row {row} (0-based; line {row + 1} of a .jsonl), field {field!r}: {what}"
        if bad_rows == "error":
            raise DatasetError(msg + " (fix the row, or set bad_rows='skip' to drop such rows)")
        report.skip(reason, msg)

    for i, row in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        if i in bad_utf8:
            reject("invalid_utf8", i, bad_utf8[i], "is not valid UTF-8")
            continue
        try:
            record = task.to_record(row)
            record["id"] = record_id(record.get("id"), stem, i)
            validate_record(record, task.schema)
            _check_pass_rate(record)
        except RecordError as exc:
            reason = "invalid_utf8" if "UTF-8" in exc.reason else "invalid"
            reject(reason, i, exc.field, exc.reason)
            continue
        if record["id"] in seen:
            reject("duplicate_id", i, "id", f"duplicate id {record['id']!r} (first seen at row {seen[record['id']]})")
            continue
        seen[record["id"]] = i
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
        raise DatasetError(f"{name}: no prompts left after validation and length filtering ({report.summary()}); "
                           f"first problems: {report.messages[:3]}")
    return PromptDataset(task=task, examples=examples, report=report)
