"""Task names -> task classes: the built-in tasks by module path (imported on first use), registered ones, and
references to your own code (``data.task``, ``eval --task``).

    task = get_task("knights_knaves", correct=5.0)        # options go to the task's constructor
    task = get_task("my_pkg.rewards:MyTask")             # a Task subclass on the PYTHONPATH
    task = get_task("/abs/path/my_reward.py:my_reward")  # a reward function in a file (tasks/function_task.py)

A *reference* is ``TARGET:ATTRIBUTE``. ``TARGET`` is a module importable here (``my_pkg.rewards``, found on
``PYTHONPATH``) or a ``.py`` file (a path; in a config file a relative one is taken from the config file's folder,
see ``rlad_megatron/config/paths.py``). A file is imported as a module named after it, with its folder appended to
``sys.path`` (so its own imports of sibling files work, and the reward's worker processes find it too); a module of
that name that lives elsewhere is a clear error (rename the file). ``ATTRIBUTE`` is a
:class:`rlad_megatron.tasks.base.Task` subclass (``data.task_options`` go to its constructor) or a reward function
(:class:`rlad_megatron.tasks.function_task.FunctionTask` wraps it). Under torchrun every rank resolves the reference
itself; in a Slurm job the module must be on the job's ``PYTHONPATH`` or the file on a filesystem the job sees.

Built-in tasks are named here rather than registering themselves on import, so that the registry never imports
a task module until it is asked for one and no task module imports the registry.
"""
from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Mapping

from rlad_megatron.tasks.base import Task
from rlad_megatron.tasks.function_task import FunctionTask

#: Built-in tasks: name -> "module:class".
BUILTIN_TASKS: dict[str, str] = {
    "arithmetic": "rlad_megatron.tasks.arithmetic.task:ArithmeticTask",
    "carry_trap": "rlad_megatron.tasks.carry_trap.task:CarryTrapTask",
    "knights_knaves": "rlad_megatron.tasks.knights_knaves.task:KnightsKnavesTask",
    "knights_knaves_compact": "rlad_megatron.tasks.knights_knaves.compact:KnightsKnavesCompactTask",
    "math": "rlad_megatron.tasks.math.task:MathTask",
    "multiple_choice": "rlad_megatron.tasks.multiple_choice.task:MultipleChoiceTask",
    "sum_prefix": "rlad_megatron.tasks.sum_prefix.task:SumPrefixTask",
}

_REGISTERED: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    """Register a task factory under ``name`` (an error if a built-in or registered task has that name)."""
    if name in BUILTIN_TASKS or name in _REGISTERED:
        raise ValueError(f"task {name!r} is already registered")
    if ":" in name:
        raise ValueError(f"task name {name!r}: ':' marks a reference to code ('module:attribute'); pick another")
    _REGISTERED[name] = factory


def task_names() -> list[str]:
    """Names of the built-in and registered tasks."""
    return sorted({*BUILTIN_TASKS, *_REGISTERED})


def get_task(name: str, **options: Any) -> Task:
    """A new instance of the task named (or referenced: see the module docstring) ``name``; ``options`` go to its
    constructor. An unknown name is a ``KeyError``, a reference that cannot be used a ``ValueError``."""
    return _factory(name)(**options)


def _factory(name: str) -> Callable[..., Task]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in BUILTIN_TASKS:
        module_name, class_name = BUILTIN_TASKS[name].split(":")
        return getattr(importlib.import_module(module_name), class_name)
    if not is_reference(name):
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())} (or your own: "
                       "'module:attribute' or 'path/to/file.py:attribute')")
    return _reference_factory(name)


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


# -- references to the user's code ------------------------------------------------------------------------------
def is_reference(value: str) -> bool:
    """Whether ``value`` names code of the user's (``TARGET:ATTRIBUTE``) rather than a built-in or registered
    task."""
    return isinstance(value, str) and value not in BUILTIN_TASKS and value not in _REGISTERED and ":" in value


def reference_file(value: str) -> str | None:
    """The ``.py`` file a reference names (as written), or None for a module reference or a task name."""
    target = value.rpartition(":")[0] if is_reference(value) else ""
    return target if target.endswith(".py") else None


def check_task_reference(value: str, key: str = "data.task", resolve: bool = True) -> str | None:
    """Why ``value`` cannot be ``data.task`` (or the setting ``key``; one line naming it), or None when it is a
    known task, or a reference whose module or file is found and defines the attribute at its top level.

    ``resolve=False`` checks the form only (a known name, or ``TARGET:ATTRIBUTE`` with a module name or a ``.py``
    path): what config validation does, since the code may exist only where the job runs (a container, the job's
    PYTHONPATH). ``resolve=True`` (job start, ``rlad-megatron data check``, eval) is pure-ish: it imports only the
    parent packages of a dotted module (to find it); a module's or file's source is parsed, never run. A relative
    file path is taken from the working directory (a config file's are made absolute against its folder when it is
    loaded: ``rlad_megatron/config/paths.py``)."""
    if not isinstance(value, str) or not value:
        return f"{key}: give a task name (" + ", ".join(task_names()) + ") or 'module:attribute'"
    if not is_reference(value):
        if value in BUILTIN_TASKS or value in _REGISTERED:
            return None
        return (f"{key}={value!r} is not a registered task; choose one of {', '.join(task_names())}, or name "
                "your own code: 'my_pkg.rewards:my_reward' or 'path/to/my_reward.py:my_reward'")
    target, _, attr = value.rpartition(":")
    if not attr.isidentifier():
        return f"{key}={value!r}: {attr!r} after the last ':' is not a Python name"
    if target.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(target))
        if not resolve:
            return None
        if not os.path.isfile(path):
            return f"{key}={value!r}: no such file {path}"
        clash = _module_clash(path)
        if clash:
            return f"{key}={value!r}: {clash}"
        origin: str | None = path
    else:
        if not target or not all(part.isidentifier() for part in target.split(".")):
            return f"{key}={value!r}: {target!r} is neither a module name nor a .py file"
        if not resolve:
            return None
        why = ""
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError) as err:
            spec, why = None, f" ({type(err).__name__}: {err})"
        if spec is None:
            return (f"{key}={value!r}: module {target!r} is not importable here{why}; put its folder on "
                    f"PYTHONPATH (the job's too), or name the file: 'path/to/file.py:{attr}'")
        origin = spec.origin if spec.origin and spec.origin.endswith(".py") else None
    if origin is not None and attr not in _top_level_names(origin):
        return f"{key}={value!r}: {origin} defines no top-level {attr!r}"
    return None


def _top_level_names(path: str) -> set[str]:
    """Names a module's source binds at its top level (definitions, assignments, imports); every name when the
    source cannot be parsed (importing it will say what is wrong)."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return _Everything()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):  # conditional definitions: accept what either branch binds
            for child in ast.walk(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names.add(child.name)
                elif isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                    names.add(child.id)
    return names


class _Everything(set):
    def __contains__(self, item: object) -> bool:
        return True


def _module_clash(path: str) -> str | None:
    """Why the file ``path`` cannot be imported under its own name here (another module has that name)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier():
        return f"{os.path.basename(path)!r} is not an importable module name (use letters, digits and _)"
    loaded = sys.modules.get(stem)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where and _same_file(where, path):
            return None
        return f"a module named {stem!r} is already imported from {where or 'the interpreter'}: rename {path}"
    try:
        spec = importlib.util.find_spec(stem)
    except (ImportError, ValueError):
        return None
    if spec is None or (spec.origin and _same_file(spec.origin, path)):
        return None
    return f"a module named {stem!r} already exists ({spec.origin}): rename {path}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _import_reference(value: str) -> Any:
    problem = check_task_reference(value)
    if problem:
        raise ValueError(problem)
    target, _, attr = value.rpartition(":")
    try:
        if target.endswith(".py"):
            path = os.path.abspath(os.path.expanduser(target))
            folder, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
            if folder not in sys.path:
                sys.path.append(folder)  # appended: the folder's other files never shadow installed modules
            module = importlib.import_module(stem)
        else:
            module = importlib.import_module(target)
    except Exception as err:  # noqa: BLE001 - the user's module failed on import: say so, with the cause
        raise ValueError(f"data.task={value!r}: importing {target} failed: {type(err).__name__}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"data.task={value!r}: {target} has no attribute {attr!r}") from None


def _reference_factory(value: str) -> Callable[..., Task]:
    obj = _import_reference(value)
    if isinstance(obj, type):
        if not issubclass(obj, Task):
            raise ValueError(f"data.task={value!r}: {obj.__name__} is a class but not a subclass of "
                             "rlad_megatron.tasks.base.Task")
        return obj
    if callable(obj):
        return functools.partial(FunctionTask, obj, value)
    raise ValueError(f"data.task={value!r}: a {type(obj).__name__} object is neither a Task subclass nor a reward "
                     "function")
