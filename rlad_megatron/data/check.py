"""Check a run's data before anything heavy starts: every file exists and is readable, and its first rows give
valid records for the task (``data.fields`` and the conversational layouts applied), with the key, file, row and
field of each problem named. No tokenizer, model or process group is touched; a hub dataset (``hub:...``) is not
checked here (that needs the network), nor is the prompt length (that needs the tokenizer).

    problems = check_data_files(config.data)    # [] when the data looks right

Called by ``rlad-megatron train`` on every rank before the models load, by ``rlad-megatron data check``, and by
``rlad-megatron eval`` (:func:`check_source_rows` per benchmark).
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

from rlad_megatron.data.rows import prepare_row, row_to_record
from rlad_megatron.data.sources import DatasetError, first_rows, hub_name
from rlad_megatron.tasks.base import RecordError, Task
from rlad_megatron.tasks.registry import get_training_task

#: Rows read from the start of each file.
CHECKED_ROWS = 5


def check_source_rows(source: str, task: Task | None, *, key: str, fields: Mapping[str, str] | None = None,
                      split: str = "train", bad_rows: str = "error", rows: int = CHECKED_ROWS) -> list[str]:
    """Problems with one data source (``key`` names the setting, e.g. ``data.train_files``). With
    ``bad_rows="skip"`` a bad row is a problem only when all the first ``rows`` rows are bad (a wrong mapping,
    not a stray row); without a ``task`` only the file itself is checked."""
    if hub_name(source) is not None:
        return []
    try:
        head = first_rows(source, split=split, count=rows)
    except DatasetError as err:
        return [f"{key}: {err}"]
    except OSError as err:
        return [f"{key}: {source}: cannot be read ({err.strerror or err})"]
    if not head:
        return [f"{key}: {source}: no rows" + (f" in split {split!r}" if split != "train" else "")]
    if task is None:
        return []
    errors = []
    for i, row in enumerate(head):
        try:
            row_to_record(task, row, fields, f"row-{i}")
        except RecordError as err:
            errors.append(f"{key}: {source}: row {i} (0-based; line {i + 1} of a .jsonl), field {err.field!r}: "
                          f"{err.reason}")
        except Exception as err:  # noqa: BLE001 - a task's own to_record failing on a row is a problem to report
            errors.append(f"{key}: {source}: row {i}: {type(task).__name__}.to_record failed: "
                          f"{type(err).__name__}: {err}")
    if not errors:
        return []
    if bad_rows == "error":
        return errors[:1]
    if len(errors) == len(head):
        return [f"{errors[0]} (and each of the {len(head) - 1} rows after it: is data.fields right?)"]
    return []


def check_data_files(data: Any, rows: int = CHECKED_ROWS) -> list[str]:
    """Problems with the data of a run config's ``data`` section (a ``DataConfig``), one line each naming the key,
    file, row and field; [] when its files are readable and their first ``rows`` rows give valid records for
    ``data.task`` (built with ``data.task_options``; a task that cannot be built is one problem, and then only the
    files themselves are checked)."""
    problems: list[str] = []
    task: Task | None = None
    try:
        task = get_training_task(data.task, data.task_options)
    except (KeyError, ValueError) as err:
        problems.append(str(err.args[0] if isinstance(err, KeyError) else err))
    for key, sources, split in (("data.train_files", data.train_files, data.split),
                                ("data.eval_files", data.eval_files, data.eval_split or data.split)):
        for source in sources:
            problems += check_source_rows(source, task, key=key, fields=data.fields, split=split,
                                          bad_rows=data.bad_rows, rows=rows)
    return problems


def check_every_row(source: str, problem: Callable[[Mapping[str, Any]], str | None], *, key: str,
                    fields: Mapping[str, str] | None = None, split: str = "train") -> list[str]:
    """The first row of a local ``source`` (read whole) whose record (``data.fields`` and the conversational layouts
    applied) ``problem`` objects to, as one line naming ``key``, the file and the row; [] when every row passes.
    For what the run needs on EVERY record (a teacher pass rate, a routing field): the checks above read the first
    rows only. Rows that do not give a record at all are left to those checks and the loader; a hub dataset is not
    read (that needs the network)."""
    if hub_name(source) is not None:
        return []
    try:
        rows = first_rows(source, split=split, count=sys.maxsize)
    except (DatasetError, OSError):
        return []  # check_source_rows reports an unreadable source
    for i, row in enumerate(rows):
        try:
            record = prepare_row(row, fields)
        except RecordError:
            continue
        found = problem(record)
        if found:
            return [f"{key}: {source}: row {i} (0-based; line {i + 1} of a .jsonl): {found}"]
    return []
