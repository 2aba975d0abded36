"""Task names -> task classes: the built-in tasks by module path (imported on first use), plus registered ones.

    task = get_task("knights_knaves", correct=5.0)      # options go to the task's constructor

Built-in tasks are named here rather than registering themselves on import, so that the registry never imports
a task module until it is asked for one and no task module imports the registry.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from rlad_megatron.tasks.base import Task

#: Built-in tasks: name -> "module:class".
BUILTIN_TASKS: dict[str, str] = {
    "arithmetic": "rlad_megatron.tasks.arithmetic.task:ArithmeticTask",
    "carry_trap": "rlad_megatron.tasks.carry_trap.task:CarryTrapTask",
    "knights_knaves": "rlad_megatron.tasks.knights_knaves.task:KnightsKnavesTask",
    "knights_knaves_compact": "rlad_megatron.tasks.knights_knaves.compact:KnightsKnavesCompactTask",
    "math": "rlad_megatron.tasks.math.task:MathTask",
    "sum_prefix": "rlad_megatron.tasks.sum_prefix.task:SumPrefixTask",
}

_REGISTERED: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Register a task factory under ``name`` (an error if a built-in or registered task has that name)."""
    if name in BUILTIN_TASKS or name in _REGISTERED:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTERED[name] = factory


def task_names() -> list[str]:
    """Names of the built-in and registered tasks."""
    return sorted({*BUILTIN_TASKS, *_REGISTERED})


def get_task(name: str, **options: Any) -> Task:
    """A new instance of the task named ``name``; ``options`` go to its constructor."""
    if name in _REGISTERED:
        return _REGISTERED[name](**options)
    if name not in BUILTIN_TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    module_name, class_name = BUILTIN_TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)


def _factory(name: str) -> Callable[..., Task]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in BUILTIN_TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    module_name, class_name = BUILTIN_TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def training_task_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The constructor options of ``name`` in a training run: its ``training_options`` (math: answer fallbacks
    off) overridden by ``options`` (``data.task_options``)."""
    return {**dict(getattr(_factory(name), "training_options", {})), **dict(options or {})}


def get_training_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task of a training run (:func:`training_task_options`). A wrong option is a ``ValueError`` naming it
    and the task."""
    factory = _factory(name)
    merged = training_task_options(name, options)
    try:
        return factory(**merged)
    except TypeError as err:
        raise ValueError(f"data.task_options={dict(options or {})!r} do not fit task {name!r}: {err}") from err
