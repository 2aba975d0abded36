"""The run's ``metrics.jsonl``: one ``{"step": s, key: value, ...}`` object per line (non-finite values as ``null``).
Read here only (the logger, the curves, the tests' and examples' readers all ask :func:`read_metrics`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlad_megatron.checkpoint_files import write_text_durably

METRICS_FILE = "metrics.jsonl"


def read_metrics(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """All well-formed rows of a metrics file, in order (a torn last line after a crash is skipped)."""
    path = Path(metrics_jsonl)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [row for _, row in _rows(f)]


def _rows(lines) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` of every well-formed line: a JSON object with an integer ``step``."""
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.append((line, row))
    return out


def truncate_metrics(metrics_jsonl: Path, last_step: int) -> int:
    """Keep only the rows with ``step <= last_step`` (and drop torn lines); returns the number of rows dropped.

    Written to a temporary file and renamed over the original, so a crash here leaves either file whole.
    """
    path = Path(metrics_jsonl)
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = [line if line.endswith("\n") else line + "\n" for line, row in _rows(lines) if row["step"] <= last_step]
    write_text_durably(path, "".join(kept))
    return len(lines) - len(kept)
