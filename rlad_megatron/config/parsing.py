"""Turning nested mappings, YAML values and dotted command-line overrides into config dataclasses.

Generic over the dataclasses (the run's are the sections of this package): each value is converted by its field's
declared type, an unknown key or a value of the wrong type (a ``Literal`` field: a value it does not list) is a
``ConfigError`` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

import yaml

from rlad_megatron.config.validators import ConfigError


class _OverrideText(str):
    """The text of a command-line override, converted by the declared type of its field (see ``_coerce``)."""


_NULL_TEXT = ("null", "none", "~", "")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, _OverrideText) and value.strip().lower() in _NULL_TEXT and type(None) in args:
            return None
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}={str(value)!r}: choose one of {', '.join(repr(a) for a in args)}")
        return args[args.index(value)]  # the declared value itself (never the override's text object)
    if origin is list:
        if isinstance(value, _OverrideText) and value.strip().startswith("["):
            value = _yaml_text(value, key)
        if isinstance(value, str):
            value = [_OverrideText(v) if isinstance(value, _OverrideText) else v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:  # data.task_options, data.chat_template_kwargs: each value converted by its own type
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of names to values, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") if args else v for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value.strip()) if isinstance(value, str) else int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, _OverrideText):
            return str.__str__(value)  # the literal text: 0755 stays "0755", 0x10 stays "0x10"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(annotation):  # an item of a list of sections (teacher.teachers)
        return build_dataclass(annotation, _yaml_text(value, key) if isinstance(value, _OverrideText) else value, key)
    if isinstance(value, _OverrideText):  # a field of another type (a mapping, ...): the text is YAML
        return _yaml_text(value, key)
    return value


def _yaml_text(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(str(text))
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse {str(text)!r}: {err}") from None


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """``cls(**data)`` with every value converted by its field's type, nested dataclasses built recursively."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]}; valid keys under {prefix or 'the top level'}: {sorted(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if isinstance(value, _OverrideText):
                value = _yaml_text(value, key)
            kwargs[name] = build_dataclass(annotation, value or {}, key)
        else:
            kwargs[name] = _coerce(value, annotation, key)
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested mapping. The value stays text until the config is built,
    which converts it by the field's declared type: a ``str`` field keeps the literal text, an ``int`` field parses
    an integer, ``null`` clears an optional field, a list takes ``a,b`` or ``[a, b]``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected the form section.key=value")
        node[parts[-1]] = _OverrideText(raw)
    return data


def flatten_dotted(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted keys that overrides and config comparisons use."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_dotted(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
