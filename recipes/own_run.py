"""Your own run as a recipe: a YAML run config (any student/teacher pair, your data, your reward) becomes a
:class:`recipes.base.Recipe`, launched and planned exactly like the paper's recipes.

    recipe = recipe_from_config("my_run.yaml", ["trainer.steps=100"], nodes=2, gpus_per_node=8)
    recipe = with_config_file(get_recipe("logic_qwen3_0p6b"), "changes.yaml", ["trainer.steps=5"])

The config is read by ``load_run_config``, as ``rlad-megatron train --config`` reads it: relative paths in the file
are taken from its folder, those of command-line overrides from the working directory, and every path leaves here
absolute, so that the job (another folder, another node) reads the same files. The job gets the config on its
command line (``Recipe.train_args``: every key that differs from the defaults), so the rendered sbatch script says
exactly what runs.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Sequence

from rlad_megatron.config import ConfigError, load_run_config

from recipes.base import CPU_ENV, GPU_ENV, Recipe, config_overrides


def run_name(path: str | Path) -> str:
    """The recipe (and NeMo-Run experiment) name of a config file: its file name without the suffix."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")
    return name or "run"


def recipe_from_config(path: str | Path, overrides: Sequence[str] = (), *, nodes: int = 1, gpus_per_node: int = 8,
                       rollout_gpus: int = 0, cpu: bool = False, gpu_memory: str | None = None) -> Recipe:
    """The recipe of the run config ``path`` (with dotted ``overrides``) on ``nodes x gpus_per_node``.

    ``cpu``: the job runs on CPUs (``gpus_per_node`` counts processes, Slurm is asked for no GPUs, the memory plan
    has no GPU limit). ``gpu_memory``: the GPU the memory plan checks against (default "h100"). The model shapes
    are added by :func:`recipes.shapes.resolve_shapes` (from the models' config.json).
    """
    config = load_run_config(path, list(overrides))
    algorithm = config.loss.algorithm
    teacher = f" <- {Path(config.model.teacher).name}" if config.model.teacher else ""
    return Recipe(name=run_name(path), description=f"{Path(path)}: {algorithm}, {Path(config.model.student).name}"
                  f"{teacher}", config=config, nodes=nodes, gpus_per_node=gpus_per_node, rollout_gpus=rollout_gpus,
                  env=dict(CPU_ENV if cpu else GPU_ENV), gpu=not cpu, gpu_memory=gpu_memory or "h100")


def _yaml_keys(path: str | Path) -> list[str]:
    """The dotted keys a config file sets (a dict value, e.g. ``data.fields``, counts as its own key)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        load_run_config(path)  # raises the reader's own error, naming the file and the line
        raise
    if not isinstance(data, dict):
        load_run_config(path)
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    keys: list[str] = []
    for section, values in data.items():
        if isinstance(values, dict):
            keys += [f"{section}.{key}" for key in values]
        else:
            keys.append(str(section))
    return keys


def _overlaps(key: str, keys: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)


def with_config_file(recipe: Recipe, path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """``recipe`` with the keys of the config file ``path`` on top of its own, then ``overrides`` on top of both.

    The file's relative paths are taken from its folder (as ``train --config`` takes them); the recipe's keys
    that the file does not set keep the recipe's values.
    """
    mine = _yaml_keys(path)
    kept = [item for item in config_overrides(recipe.config) if not _overlaps(item.split("=", 1)[0], mine)]
    config = load_run_config(path, [*kept, *overrides])
    return dataclasses.replace(recipe, config=config)
