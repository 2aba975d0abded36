"""Which of several teachers scores a prompt (``teacher.teachers``): the value of the record field
``teacher.route_field`` names it, and a prompt without a value goes to ``teacher.default``.

    router = TeacherRouter.of(config)         # None with one teacher
    router(record)                            # -> the teacher's index in teacher.teachers
    router.problem(record)                    # -> why this record cannot be routed (the run's checks), or None

Routing by task: rows of a mixed data set that carry their task's name in a column (``route_field: task``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


class TeacherRouter:
    def __init__(self, names: Sequence[str], route_field: str = "", default: str = "") -> None:
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.route_field, self.default = route_field, default

    @classmethod
    def of(cls, config: Any) -> "TeacherRouter | None":
        """The router of a run config with several teachers (``teacher.teachers``); None with one teacher."""
        t = config.teacher
        if not t.several():
            return None
        return cls([m.name for m in t.teachers], t.route_field, t.default)

    def _name(self, record: Mapping[str, Any]) -> str | None:
        value = record.get(self.route_field) if self.route_field else None
        if value is None or value == "":
            return self.default or None
        return str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else repr(value)

    def problem(self, record: Mapping[str, Any]) -> str | None:
        """Why ``record`` cannot be routed (naming the key and the fix), or None."""
        name = self._name(record)
        if name is None:
            return (f"no value in teacher.route_field={self.route_field!r} to name its teacher: give every row one "
                    f"of {self.names}, or set teacher.default")
        if name not in self.index:
            where = f"teacher.route_field={self.route_field!r} names" if self.route_field else "teacher.default is"
            return f"{where} teacher {name!r}, which is not one of teacher.teachers' names {self.names}"
        return None

    def __call__(self, record: Mapping[str, Any]) -> int:
        """The index in ``teacher.teachers`` of ``record``'s teacher; ``ValueError`` when it has none (the run's
        checks refuse such data before the run starts)."""
        found = self.problem(record)
        if found:
            raise ValueError(f"record {record.get('id')!r}: {found}")
        return self.index[self._name(record)]  # type: ignore[index]
