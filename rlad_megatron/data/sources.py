"""Where prompt rows come from: a local file, a local dataset folder, or a hub dataset, read through ``datasets``.

A *source* is one of
- a file: ``.jsonl`` / ``.json`` / ``.parquet`` / ``.arrow`` / ``.csv`` (read whole: a file is its own split);
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``load_from_disk``; a DatasetDict
  gives its ``split``), or any other dataset folder ``load_dataset(folder, split=...)`` reads (e.g. a hub dataset
  downloaded with ``hf download ORG/NAME --repo-type dataset --local-dir DIR``, with ``data/train-*.parquet`` and
  ``data/test-*.parquet``);
- ``hub:ORG/NAME`` or ``hub:ORG/NAME:CONFIG``: a dataset on the Hugging Face hub (``load_dataset(name, config,
  split=...)``; the only form that may reach the network). A value without ``hub:`` is always a local path, so a
  missing local path is reported as missing, never looked up on the hub.

Every failure is a :class:`DatasetError` naming the source (and, where known, the line of a ``.jsonl``).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator

from rlad_megatron.config.paths import HUB_PREFIX  # noqa: F401 (part of this module's interface)

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}


class DatasetError(ValueError):
    """A dataset problem, with the file (or hub name), 0-based row and field when they are known."""


def hub_name(source: str) -> tuple[str, str | None] | None:
    """``(name, config)`` of a ``hub:ORG/NAME[:CONFIG]`` source, else None."""
    if not source.startswith(HUB_PREFIX):
        return None
    name, _, config = source[len(HUB_PREFIX):].partition(":")
    if not name:
        raise DatasetError(f"{source}: give the dataset after 'hub:', e.g. hub:openai/gsm8k:main")
    return name, config or None


def is_saved_dataset(folder: str) -> bool:
    """A folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("state.json", "dataset_dict.json"))


def check_source(source: str) -> None:
    """Raise :class:`DatasetError` unless ``source`` is a hub name or an existing, non-empty, supported local
    file or folder (no rows are read)."""
    if hub_name(source) is not None:
        return
    if not os.path.exists(source):
        raise DatasetError(f"data file or folder not found: {source} (a hub dataset is written hub:ORG/NAME)")
    if os.path.isdir(source):
        if not any(not name.startswith(".") for name in os.listdir(source)):
            raise DatasetError(f"data folder {source} is empty: no data files to load (a folder holds "
                               f"{', '.join(sorted(BUILDERS))} files, or a dataset saved with save_to_disk)")
        return
    ext = os.path.splitext(source)[1].lower()
    if ext not in BUILDERS:
        raise DatasetError(f"{source}: unsupported file type {ext or '(none)'!r}; use one of {sorted(BUILDERS)}, "
                           "a dataset folder, or hub:ORG/NAME")
    if not os.access(source, os.R_OK):
        raise DatasetError(f"{source}: not readable (permissions)")
    if _is_empty(source):
        raise DatasetError(f"data file {source} is empty: no rows to load")


def load_raw_dataset(source: str, split: str = "train", cache_dir: str | None = None,
                     streaming: bool = False) -> Any:
    """The ``datasets.Dataset`` (``IterableDataset`` with ``streaming``) of one source (see the module docstring);
    ``split`` picks the split of a folder or hub dataset."""
    import datasets  # lazy: Hugging Face datasets is heavy

    check_source(source)
    hub = hub_name(source)
    try:
        if hub is not None:
            return datasets.load_dataset(hub[0], hub[1], split=split, cache_dir=cache_dir, streaming=streaming)
        if os.path.isdir(source):
            if is_saved_dataset(source):
                ds = datasets.load_from_disk(source)
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DatasetError(f"{source}: no split {split!r}; it has {sorted(ds)} (data.split)")
                    ds = ds[split]
                return ds.to_iterable_dataset() if streaming else ds
            return datasets.load_dataset(source, split=split, cache_dir=cache_dir, streaming=streaming)
        builder = BUILDERS[os.path.splitext(source)[1].lower()]
        return datasets.load_dataset(builder, data_files=[source], split="train", cache_dir=cache_dir,
                                     streaming=streaming)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the source named
        where = _diagnose_json_lines(source) if source.lower().endswith(".jsonl") else ""
        hint = ""
        if "split" in str(exc).lower() and (hub is not None or os.path.isdir(source)):
            hint = f" (data.split / --split is {split!r})"
        raise DatasetError(f"{source}: could not load with `datasets` "
                           f"({type(exc).__name__}: {str(exc)[:300]}){hint}{where}") from exc


def first_rows(source: str, split: str = "train", count: int = 5) -> list[dict[str, Any]]:
    """The first ``count`` rows of a local source, read without loading the whole dataset (``.jsonl`` lines are
    parsed directly, so that a bad line is named; other sources stream through ``datasets``)."""
    check_source(source)
    if source.lower().endswith(".jsonl"):
        return list(_json_lines(source, count))
    ds = load_raw_dataset(source, split=split, streaming=True)
    rows = []
    try:
        for row in ds:
            rows.append(row)
            if len(rows) >= count:
                break
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the source named
        raise DatasetError(f"{source}: could not read its first rows ({type(exc).__name__}: {str(exc)[:300]})") \
            from exc
    return rows


def _json_lines(path: str, count: int) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as fh:
        found = 0
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path} line {lineno} (row {lineno - 1}): invalid UTF-8 at byte {exc.start}") \
                    from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as exc:
                raise DatasetError(f"{path} line {lineno} (row {lineno - 1}): invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path} line {lineno} (row {lineno - 1}): expected a JSON object, got "
                                   f"{type(row).__name__}")
            yield row
            found += 1
            if found >= count:
                return


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
    try:
        for _ in _json_lines(path, 1 << 62):
            pass
    except DatasetError as err:
        return f"; {err}"
    except OSError:
        return ""
    return ""


def rows_of(ds: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The rows of a ``datasets.Dataset`` as Python dicts, and {row: field} for cells whose bytes are not valid
    UTF-8.

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
