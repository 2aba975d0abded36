"""What every training record must hold for a run, checked over whole files before the run starts (the data checks
of :mod:`rlad_megatron.data.check` read the first rows only):

- ``loss.teacher_trust`` gate/scale: a ``teacher_pass_rate`` on every prompt (``rlad-megatron teacher-trust`` writes
  it), so that a missing rate stops the run at its start, not at the step that samples that prompt;
- several teachers routed by ``teacher.route_field``: a value naming one of ``teacher.teachers`` (or none at all
  when ``teacher.default`` is set).

    problems = record_problems(config)   # [] when every training record holds what the run needs
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from rlad_megatron.config import RunConfig
from rlad_megatron.data.check import check_every_row
from rlad_megatron.data.rows import TEACHER_PASS_RATE
from rlad_megatron.teacher.routing import TeacherRouter

Problem = Callable[[Mapping[str, Any]], "str | None"]


def pass_rate_problem(config: RunConfig) -> Problem | None:
    """The check of every record's teacher pass rate, when ``loss.teacher_trust`` uses it (the loader checks its
    value where it is present)."""
    mode = config.loss.teacher_trust
    if mode == "none":
        return None
    teacher = config.model.teacher or "TEACHER"

    def problem(record: Mapping[str, Any]) -> str | None:
        if record.get(TEACHER_PASS_RATE) is not None:
            return None
        return (f"no {TEACHER_PASS_RATE!r} field, which loss.teacher_trust={mode} needs on every training prompt: "
                f"measure it with `rlad-megatron teacher-trust --teacher {teacher} --data FILE --out "
                f"FILE_trust.jsonl` and train on that copy (or set loss.teacher_trust=none)")

    return problem


def route_problem(config: RunConfig) -> Problem | None:
    """The check that every record names one of several teachers (or falls to ``teacher.default``)."""
    router = TeacherRouter.of(config)
    return None if router is None else router.problem


def record_problems(config: RunConfig) -> list[str]:
    """The first offending row of each training file, one line each naming the key, the file and the fix."""
    checks = [c for c in (pass_rate_problem(config), route_problem(config)) if c is not None]
    if not checks:
        return []

    def problem(record: Mapping[str, Any]) -> str | None:
        for check in checks:
            found = check(record)
            if found:
                return found
        return None

    out: list[str] = []
    for source in config.data.train_files:
        out += check_every_row(source, problem, key="data.train_files", fields=config.data.fields,
                               split=config.data.split)
    return out
