"""From a dataset row to what a task reads: the column mapping of ``data.fields`` and conversational rows.

The loader applies :func:`prepare_row` to every row before ``Task.to_record``:

1. ``data.fields`` (``{target: source}``): ``row[target] = `` the value at ``source``, a column name or a dotted
   path into nested columns (``reward_model.ground_truth``; a number indexes a list: ``messages.0.content``). A
   column whose own name holds a dot is found first. The row's other columns stay: tasks and rewards see them all
   (``example.record``), e.g. a ``teacher_pass_rate`` column.
2. Conversational rows, as TRL and verl store them (turns are ``{"role", "content"}`` dicts; ``content`` may be a
   list of ``{"type": "text", "text"}`` parts):

   - ``prompt`` a list of turns: the last turn must be the user's and becomes ``prompt``; the system turns become
     ``system`` (joined by a blank line; the prompt is built with it); the user/assistant turns before the last
     one become ``history`` (earlier turns of the conversation, put before the last user turn in the chat).
   - no ``prompt`` but ``messages``: when the conversation ends with an assistant turn, that turn is the reference
     reply and becomes ``answer`` (unless the row has an ``answer``) and the turns before it are read as above;
     a conversation ending with a user turn is all prompt.

Errors are :class:`rlad_megatron.tasks.base.RecordError` naming the field (the source column for a mapped field).
"""
from __future__ import annotations

from typing import Any, Mapping

from rlad_megatron.tasks.base import RecordError, validate_record

_MISSING = object()

TEACHER_PASS_RATE = "teacher_pass_rate"
"""Optional record field: the fraction of the teacher's own samples the verifier marks correct on this prompt
(written by ``rlad-megatron teacher-trust``, read by ``loss.teacher_trust``); a number in [0, 1] when present."""


def field_value(row: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``row`` (a column, or a dotted path into nested mappings and lists); a missing
    step gives ``_MISSING``."""
    if path in row:
        return row[path]
    node: Any = row
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def map_fields(row: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """``row`` with ``row[target] = row at source`` for every ``target: source`` of ``fields``."""
    out = dict(row)
    for target, source in fields.items():
        value = field_value(row, source)
        if value is _MISSING:
            raise RecordError(source, f"missing (data.fields.{target}={source}; columns of this row: "
                                      f"{', '.join(sorted(map(str, row))) or 'none'})")
        out[target] = value
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: keep the text ones
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise RecordError(where, f"a turn's content must be text, got {type(content).__name__}")


def _turns(value: Any, where: str) -> list[dict[str, str]]:
    if not value:
        raise RecordError(where, "is an empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("role"), str):
            raise RecordError(where, f"turn {i} is not a {{role, content}} mapping")
        turns.append({"role": turn["role"], "content": _text(turn.get("content"), where)})
    return turns


def split_turns(turns: Any, where: str = "prompt") -> dict[str, Any]:
    """``{"prompt": last user turn, "system": ..., "history": [...]}`` of a prompt given as a list of turns."""
    turns = _turns(turns, where)
    if turns[-1]["role"] != "user":
        users = [t for t in turns if t["role"] == "user"]
        raise RecordError(where, f"the last turn is a {turns[-1]['role']!r} turn: a prompt ends with the user's turn"
                          if users else "has no user turn")
    out: dict[str, Any] = {"prompt": turns[-1]["content"]}
    systems = [t["content"] for t in turns[:-1] if t["role"] == "system" and t["content"]]
    if systems:
        out["system"] = "\n\n".join(systems)
    history = [t for t in turns[:-1] if t["role"] != "system"]
    if history:
        out["history"] = history
    return out


def prepare_row(row: Mapping[str, Any], fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The row with ``data.fields`` applied and a conversational prompt split into ``prompt``, ``system`` and
    ``history`` (see the module docstring). Raises :class:`RecordError`."""
    rec = map_fields(row, fields) if fields else dict(row)
    if isinstance(rec.get("prompt"), (list, tuple)):
        rec.update(split_turns(rec["prompt"], "prompt"))
    elif rec.get("prompt") is None and isinstance(rec.get("messages"), (list, tuple)):
        turns = _turns(rec["messages"], "messages")
        if turns[-1]["role"] == "assistant":
            if rec.get("answer") is None:
                rec["answer"] = turns[-1]["content"]
            turns = turns[:-1]
            if not turns:
                raise RecordError("messages", "holds only the assistant's reply, no user turn")
        rec.update(split_turns(turns, "messages"))
    return rec


def record_id(value: Any, default_id: str) -> Any:
    """The id a record gets: its own (an int becomes a str), else ``default_id`` (``"<file stem>-<row>"``, stable
    across loads)."""
    if value is None:
        return default_id
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


def row_to_record(task: Any, row: Mapping[str, Any], fields: Mapping[str, str] | None, default_id: str) -> dict:
    """The validated record of one dataset row for ``task`` (a :class:`rlad_megatron.tasks.base.Task`):
    :func:`prepare_row`, ``task.to_record``, ``default_id`` when the layout has no id, ``task.schema`` and the
    optional ``teacher_pass_rate``."""
    record = task.to_record(prepare_row(row, fields))
    record["id"] = record_id(record.get("id"), default_id)
    try:
        validate_record(record, task.schema)
        _check_pass_rate(record)
    except RecordError as err:
        if err.reason == "missing" and err.field not in row:
            columns = ", ".join(sorted(str(k) for k, v in row.items() if v is not None)) or "none"
            raise RecordError(err.field, f"missing (this row's columns: {columns}; map one to it with "
                                         f"data.fields.{err.field}=COLUMN)") from None
        raise
    return record
