"""Public evaluation benchmarks, from their Hugging Face datasets to our records (``rlad-megatron data prepare``).

    rlad-megatron data prepare math500 aime24 aime25 gsm8k gpqa_diamond --out data/eval
    rlad-megatron eval --model ckpt/hf --task math --data math500=data/eval/math500.jsonl,\\
        gpqa_diamond=data/eval/gpqa_diamond.jsonl --out runs/eval

Each benchmark names its dataset, the configs and split read, the task that scores it and how a row of its schema
becomes a record (``id``, ``prompt``, ``answer`` or, for multiple choice, ``correct`` + ``incorrect``, and a
``difficulty`` label). The column names are those of the public datasets' cards (docs/tasks_and_data.md lists
them with their sources). Without ``--source`` the rows come from the hub (``datasets.load_dataset``; GPQA is gated:
accept its terms on the hub and ``hf auth login`` first); with ``--source`` from local files in the same schema
(e.g. downloaded with ``hf download ORG/NAME --repo-type dataset --local-dir DIR``), one per config.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

from rlad_megatron.atomic_write import atomic_file
from rlad_megatron.data.sources import DatasetError, load_raw_dataset, rows_of

Row = dict[str, Any]


def _column(row: Row, name: str, where: str) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DatasetError(f"{where}: column {name!r} is missing or empty (columns: {', '.join(sorted(row))})")
    return value


def _text(value: Any) -> str:
    return str(value).strip()


def _math500(row: Row, i: int, part: str | None, where: str) -> Row:
    return {"id": _text(row.get("unique_id") or f"math500-{i}"), "prompt": _text(_column(row, "problem", where)),
            "answer": _text(_column(row, "answer", where)), "difficulty": f"level{row.get('level', '?')}",
            "subject": row.get("subject")}


def _aime24(row: Row, i: int, part: str | None, where: str) -> Row:
    ident = row.get("id")
    return {"id": f"aime24-{ident if ident is not None else i}", "prompt": _text(_column(row, "problem", where)),
            "answer": _text(_column(row, "answer", where)), "difficulty": "aime24"}


def _aime25(row: Row, i: int, part: str | None, where: str) -> Row:
    label = (part or "aime25").replace("AIME2025", "aime25")
    return {"id": f"{label}-{i}", "prompt": _text(_column(row, "question", where)),
            "answer": _text(_column(row, "answer", where)), "difficulty": label}


def _gsm8k(row: Row, i: int, part: str | None, where: str) -> Row:
    solution = _text(_column(row, "answer", where))
    if "####" not in solution:
        raise DatasetError(f"{where}: column 'answer' has no '#### <number>' final line")
    return {"id": f"gsm8k-{i}", "prompt": _text(_column(row, "question", where)),
            "answer": solution.rsplit("####", 1)[1].strip().replace(",", ""), "difficulty": "gsm8k"}


def _gpqa(row: Row, i: int, part: str | None, where: str) -> Row:
    wrong = [_text(_column(row, f"Incorrect Answer {j}", where)) for j in (1, 2, 3)]
    return {"id": _text(row.get("Record ID") or f"gpqa-{i}"), "prompt": _text(_column(row, "Question", where)),
            "correct": _text(_column(row, "Correct Answer", where)), "incorrect": wrong,
            "difficulty": _text(row.get("High-level domain") or row.get("Subdomain") or "gpqa")}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A public benchmark: where its rows are and how they become records of ``task``."""

    name: str
    repo: str
    configs: tuple[str | None, ...]
    split: str
    task: str
    convert: Callable[[Row, int, str | None, str], Row]
    columns: str
    """The dataset's columns the conversion reads (from its dataset card)."""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("math500", "HuggingFaceH4/MATH-500", (None,), "test", "math", _math500,
              "problem, answer, level, subject, unique_id"),
    Benchmark("aime24", "HuggingFaceH4/aime_2024", (None,), "train", "math", _aime24, "id, problem, answer"),
    Benchmark("aime25", "opencompass/AIME2025", ("AIME2025-I", "AIME2025-II"), "test", "math", _aime25,
              "question, answer"),
    Benchmark("gsm8k", "openai/gsm8k", ("main",), "test", "math", _gsm8k, "question, answer ('... #### 72')"),
    Benchmark("gpqa_diamond", "Idavidrein/gpqa", ("gpqa_diamond",), "train", "multiple_choice", _gpqa,
              "Question, Correct Answer, Incorrect Answer 1-3, Record ID, High-level domain"),
)}


def _hub_rows(bench: Benchmark, config: str | None, cache_dir: str | None) -> list[Row]:
    import datasets  # lazy: Hugging Face datasets is heavy

    try:
        ds = datasets.load_dataset(bench.repo, config, split=bench.split, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the dataset
        gated = " (a gated dataset: accept its terms on the hub, then `hf auth login`)" if "gpqa" in bench.repo else ""
        raise DatasetError(f"{bench.repo}{'/' + config if config else ''}: could not load from the hub "
                           f"({type(exc).__name__}: {str(exc)[:300]}){gated}; or pass --source with local "
                           "files") from exc
    return rows_of(ds)[0]


def prepare_benchmark(name: str, out_dir: str, sources: Sequence[str] = (), cache_dir: str | None = None) -> tuple[
        str, int]:
    """Write ``out_dir/<name>.jsonl`` (our records) from the hub, or from ``sources`` (local files or folders in
    the dataset's schema, one per config of the benchmark); returns (path, records)."""
    if name not in BENCHMARKS:
        raise DatasetError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    bench = BENCHMARKS[name]
    if sources and len(sources) > len(bench.configs):
        raise DatasetError(f"{name}: {len(sources)} --source files for {len(bench.configs)} part(s) "
                           f"({', '.join(str(c) for c in bench.configs)})")
    parts: list[tuple[str | None, str, list[Row]]] = []
    if sources:
        for j, source in enumerate(sources):
            config = bench.configs[j] if len(sources) == len(bench.configs) else None
            parts.append((config, source, rows_of(load_raw_dataset(source, split=bench.split, cache_dir=cache_dir))[0]))
    else:
        for config in bench.configs:
            parts.append((config, f"{bench.repo}{'/' + config if config else ''}",
                          _hub_rows(bench, config, cache_dir)))
    records, seen = [], set()
    for config, where, rows in parts:
        for i, row in enumerate(rows):
            record = bench.convert(row, i, config, f"{where}: row {i}")
            if record["id"] in seen:
                raise DatasetError(f"{where}: row {i}: duplicate id {record['id']!r}")
            seen.add(record["id"])
            records.append({k: v for k, v in record.items() if v is not None})
    if not records:
        raise DatasetError(f"{name}: no rows read")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.jsonl")

    with atomic_file(path, "w") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path, len(records)
