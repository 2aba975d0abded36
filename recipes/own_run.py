"""Your own run as a recipe: a YAML run config (any student/teacher pair, your data, your reward) becomes a
:class:`recipes.base.Recipe`, launched and planned exactly like the paper's recipes.

    recipe = recipe_from_config("my_run.yaml", ["trainer.steps=100"], nodes=2, gpus_per_node=8)
    recipe = with_config_file(get_recipe("logic_qwen3_0p6b"), "changes.yaml", ["trainer.steps=5"])

The config is read by ``load_run_config``, as ``rlad-megatron train --config`` reads it: relative paths in the file
are taken from its folder, those of command-line overrides from the working directory, and every path leaves here
absolute, so that the job (another folder, another node) reads the same files. The job gets the config on its
command line (``Recipe.train_args``: every key that differs from the defaults), so the rendered sbatch script says
exactly what runs. A value the command line cannot carry (a prompt with spaces or quotes) makes the job read a file
instead: :func:`with_job_config_file` writes the loaded config, every path absolute, next to the run's config file
(``.rlad_jobs/<name>-<hash>.yaml``: one file per distinct config, never rewritten, so a job still waiting in the
queue reads what was launched), and the job runs ``train --config`` that file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rlad_megatron.config import ConfigError, RunConfig, load_run_config, run_config_to_dict

from recipes.base import CPU_ENV, GPU_ENV, Recipe, config_overrides, format_value

JOB_CONFIGS = ".rlad_jobs"
"""The folder, next to a run's config file, of the config files jobs read (see the module docstring)."""


@dataclass
class FileConfigRecipe(Recipe):
    """A recipe whose job reads its config from ``job_config`` (a YAML file every node sees), not from overrides."""

    job_config: str = ""
    job_config_in_job: str = ""
    """The same file's path inside the job (a container's mount), or "" when it is ``job_config``."""

    def train_args(self) -> list[str]:
        return ["train", "--config", format_value(self.job_config_in_job or self.job_config)]


def run_name(path: str | Path) -> str:
    """The recipe (and NeMo-Run experiment) name of a config file: its file name without the suffix."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")
    return name or "run"


def recipe_from_config(path: str | Path, overrides: Sequence[str] = (), *, nodes: int = 1, gpus_per_node: int = 8,
                       rollout_gpus: int = 0, teacher_gpus: int = 0, cpu: bool = False,
                       gpu_memory: str | None = None) -> Recipe:
    """The recipe of the run config ``path`` (with dotted ``overrides``) on ``nodes x gpus_per_node``, with
    ``rollout_gpus`` / ``teacher_gpus`` of the engines' and a teacher pool's own (``Recipe``; 0: none, or what the
    config's teacher pool needs).

    ``cpu``: the job runs on CPUs (``gpus_per_node`` counts processes, Slurm is asked for no GPUs, the memory plan
    has no GPU limit). ``gpu_memory``: the GPU the memory plan checks against (default "h100"). The model shapes
    are added by :func:`recipes.shapes.resolve_shapes` (from the models' config.json).
    """
    config = load_run_config(path, list(overrides))
    algorithm = config.loss.algorithm
    teacher = f" <- {Path(config.model.teacher).name}" if config.model.teacher else ""
    return Recipe(name=run_name(path), description=f"{Path(path)}: {algorithm}, {Path(config.model.student).name}"
                  f"{teacher}", config=config, nodes=nodes, gpus_per_node=gpus_per_node, rollout_gpus=rollout_gpus,
                  teacher_gpus=teacher_gpus, env=dict(CPU_ENV if cpu else GPU_ENV), gpu=not cpu,
                  gpu_memory=gpu_memory or "h100")


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


def job_config_text(config: RunConfig) -> str:
    """The YAML a job reads: the whole loaded config (every path absolute), as ``rlad-megatron config`` prints it."""
    import yaml

    return ("# Written by rlad-megatron launch: the run's config as the job reads it (every path absolute).\n"
            + yaml.safe_dump(run_config_to_dict(config), sort_keys=False))


def with_job_config_file(recipe: Recipe, config_file: str | Path, *, in_job=lambda path: path) -> FileConfigRecipe:
    """``recipe`` reading its config from a file written next to ``config_file`` (the run's own config file, on a
    filesystem the job sees); ``in_job`` maps that path to the job's (a container's mounts), None: not visible."""
    text = job_config_text(recipe.config)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(config_file).resolve().parent / JOB_CONFIGS / f"{recipe.name}-{digest}.yaml"
    inside = in_job(str(path))
    if inside is None:
        raise ConfigError(f"the job reads its config from {path} (some values cannot travel on its command line), "
                          f"but that folder is under none of the container's mounts: mount {path.parent.parent} "
                          "(e.g. at the same path)")
    format_value(inside)  # a path the job's command line can carry
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    fields = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(Recipe)}
    return FileConfigRecipe(**fields, job_config=str(path), job_config_in_job="" if inside == str(path) else inside)
