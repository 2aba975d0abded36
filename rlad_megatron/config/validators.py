"""The config's error and the checks every section's ``validate`` is written with (the only copies).

Each check names the key it was given (``rollout.top_p``, or ``LossConfig.alpha`` for a section checked on its own)
and what is accepted, and raises :class:`ConfigError`, a ``ValueError``.
"""
from __future__ import annotations

import math
import typing
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config value or key that is not accepted; the message names the dotted key."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(key: str, value: Any, low: float) -> None:
    """``value >= low`` (false for NaN and for what is not a number)."""
    if not (_is_number(value) and value >= low):
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def greater_than(key: str, value: Any, low: float) -> None:
    """``value > low`` and finite."""
    if not (_is_number(value) and math.isfinite(value) and value > low):
        raise ConfigError(f"{key} must be > {low}, got {value}")


def in_range(key: str, value: Any, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False, what: str = "") -> None:
    """``value`` in ``[low, high]`` (``(`` / ``)`` with ``low_open`` / ``high_open``) and finite; ``what`` names
    the kind of value in the message ("a number": ``must be a number in [0, 1]``)."""
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{key} must be {what + ' ' if what else ''}in {'(' if low_open else '['}{low}, {high}"
                          f"{')' if high_open else ']'}, got {value}")


def choice(key: str, value: Any, choices: Sequence[Any] | Any) -> None:
    """``value`` is one of ``choices``: a sequence, or a ``Literal[...]`` type (the field's declared values)."""
    if typing.get_origin(choices) is typing.Literal:
        choices = typing.get_args(choices)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {_alternatives(choices)}, got {value!r}")


def _alternatives(choices: Sequence[Any]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    names = [repr(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
