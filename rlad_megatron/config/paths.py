"""Relative paths in a run config: taken from the config file's folder; on the command line, from the working
directory. Every path the config names leaves here absolute, so that the run (every torchrun rank, a Slurm job
started in another folder, ``rlad-megatron config``'s printout) reads the same files.

The paths: ``model.student``, ``model.teacher``, every ``teacher.teachers[i].model``, ``data.train_files``,
``data.eval_files``, the file of a ``data.task`` reference (``my_reward.py:my_reward``), ``trainer.output_dir`` and
``trainer.wandb.dir``. A data source written ``hub:ORG/NAME`` is not a path and stays as it is; a model is always a
local folder (training never downloads: a missing one is reported missing, with the ``hf download`` command that
fills it).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from rlad_megatron.tasks.registry import reference_file

HUB_PREFIX = "hub:"
"""A data source written ``hub:ORG/NAME[:CONFIG]`` is a Hugging Face hub dataset, not a path
(:mod:`rlad_megatron.data.sources` reads it)."""

PATH_KEYS = ("model.student", "model.teacher", "data.train_files", "data.eval_files", "data.task",
             "trainer.output_dir", "trainer.wandb.dir")


def absolute(path: str, base: str | Path) -> str:
    """``path`` made absolute against ``base`` (``~`` expanded, normalised)."""
    return os.path.normpath(os.path.join(str(base), os.path.expanduser(path)))


def _from_command_line(key: str, overrides: Iterable[str]) -> bool:
    for item in overrides:
        dotted = item.split("=", 1)[0].strip()
        if key == dotted or key.startswith(dotted + "."):
            return True
    return False


def _resolve(key: str, value: Any, base: str) -> Any:
    if value is None or value == "":
        return value
    if key == "data.task":
        file = reference_file(value)
        return value if file is None else f"{absolute(file, base)}:{value.rpartition(':')[2]}"
    if key in ("data.train_files", "data.eval_files"):
        return [v if not isinstance(v, str) or v.startswith(HUB_PREFIX) else absolute(v, base) for v in value]
    return absolute(value, base) if isinstance(value, str) else value


def _written(key: str, data: Mapping[str, Any]) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def resolve_paths(config: Any, base_dir: str | Path | None, overrides: Iterable[str] = (),
                  written: Mapping[str, Any] | None = None) -> Any:
    """A copy of the run config ``config`` with every path of :data:`PATH_KEYS` absolute: against ``base_dir``
    (the config file's folder; None: the working directory) for a path the file wrote, and against the working
    directory for keys set by ``overrides`` (``section.key=value`` texts given on the command line) and for defaults
    the file did not write (a default ``trainer.output_dir`` lands where the user runs the command, not beside the
    YAML). ``written``: the file's own mapping; None: every path counts as written."""
    overrides = list(overrides)
    file_base = os.path.abspath(str(base_dir)) if base_dir is not None else os.getcwd()
    config = copy.deepcopy(config)
    for key in PATH_KEYS:
        *parents, name = key.split(".")
        node = config
        for part in parents:
            node = getattr(node, part)
        from_file = written is None or _written(key, written)
        base = os.getcwd() if _from_command_line(key, overrides) or not from_file else file_base
        setattr(node, name, _resolve(key, getattr(node, name), base))
    base = os.getcwd() if _from_command_line("teacher.teachers", overrides) else file_base
    for entry in config.teacher.teachers:  # several teachers: each one's folder
        entry.model = _resolve("teacher.teachers.model", entry.model, base)
    return config
