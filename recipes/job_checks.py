"""What the launching machine checks before a job is submitted: the run's own checks, on the paths the job will read.

    problems = file_problems(config, mounts=["/lustre/models:/models", "/lustre/results:/results"], container=True)

The checks are the trainer's (``rlad_megatron.trainer.setup.checks.run_problems``, one function for the launcher
and the job): the model folders (``config.json``, weights, tokenizer), the data files' first rows and
``data.task``'s reward file or module, ``trainer.output_dir`` (not under a file, writable), what the rollout
engine can serve on the job's kind of machine (GPUs, or CPUs with ``--cpu``), the tokenizers of student and
teacher. Without a container the job runs on a filesystem the launching machine shares (a Slurm cluster's
requirement), so every path is checked here as the job will read it. In a container the config's paths are the
container's: each must lie under one of ``--mounts`` (``host:container``) -- a ``trainer.output_dir`` under no
mount would vanish with the container, checkpoints and all -- and is checked at its host path. The job checks
everything again when it starts, with what only its node can see (its GPUs, FP8, its own view of the files).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

from rlad_megatron.config import RunConfig

from recipes.shapes import teacher_needed


def parse_mounts(mounts: Sequence[str]) -> list[tuple[str, str]]:
    """``host:container[:flags]`` texts as (host, container) pairs."""
    pairs = []
    for mount in mounts:
        host, _, rest = mount.partition(":")
        pairs.append((os.path.normpath(host), os.path.normpath(rest.split(":")[0])))
    return pairs


def host_path(path: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """The host path of a container ``path`` through ``mounts`` (the deepest mount wins); None under no mount."""
    path = os.path.normpath(path)
    best = None
    for host, inside in mounts:
        if path == inside or path.startswith(inside.rstrip("/") + "/"):
            if best is None or len(inside) > len(best[1]):
                best = (host, inside)
    if best is None:
        return None
    return os.path.normpath(best[0] + path[len(best[1]):])


def container_path(path: str, mounts: Sequence[tuple[str, str]]) -> str | None:
    """The container's path of a host ``path`` (the inverse of :func:`host_path`); None under no mount."""
    return host_path(path, [(inside, host) for host, inside in mounts])


def job_path(*, container: bool, mounts: Sequence[str] = ()) -> Callable[[str], str | None]:
    """Maps a path of this machine to the job's (itself without a container)."""
    if not container:
        return lambda path: path
    pairs = parse_mounts(mounts)
    return lambda path: container_path(path, pairs)


def locator(*, container: bool, mounts: Sequence[str] = ()) -> Callable[[str], str | None]:
    """Maps a path of the job to where this machine sees it (itself without a container)."""
    if not container:
        return lambda path: path
    pairs = parse_mounts(mounts)
    return lambda path: host_path(path, pairs)


def _paths(config: RunConfig) -> list[tuple[str, str]]:
    """(key, path) of every file or folder the job reads or writes."""
    from rlad_megatron.tasks.registry import reference_file

    items = [("model.student", config.model.student)]
    if teacher_needed(config):
        items.append(("model.teacher", config.model.teacher))
    data = config.data
    items += [("data.train_files", f) for f in data.train_files if not f.startswith("hub:")]
    items += [("data.eval_files", f) for f in data.eval_files if not f.startswith("hub:")]
    task_file = reference_file(data.task)
    if task_file:
        items.append(("data.task", task_file))
    items.append(("trainer.output_dir", config.trainer.output_dir))
    return items


def unmounted_paths(config: RunConfig, mounts: Sequence[str]) -> list[str]:
    """In a container: the config's paths that lie under no mount, one problem each."""
    pairs = parse_mounts(mounts)
    problems = []
    for key, path in _paths(config):
        if host_path(path, pairs) is None:
            lost = " (the run's checkpoints and metrics would vanish with the container)" \
                if key == "trainer.output_dir" else ""
            problems.append(f"{key}={path} is under none of the container's mounts ({', '.join(mounts) or 'none'})"
                            f"{lost}: add --mounts HOST_FOLDER:{os.path.dirname(path) or path}")
    return problems


def file_problems(config: RunConfig, *, container: bool, mounts: Sequence[str] = (), cuda: bool = True) -> list[str]:
    """Everything that would stop the job when it starts, one line each naming the key: the run's own checks
    (``rlad_megatron.trainer.setup.checks.run_problems`` for a job computing on GPUs, ``cuda``, or on CPUs: model
    folders, data and its first rows, the reward reference, the output folder, what the engine can serve there,
    tokenizers), on the paths as this machine sees them (see the module)."""
    from rlad_megatron.trainer.setup.checks import run_problems  # lazy: torch comes with the trainer's checks

    problems = unmounted_paths(config, mounts) if container else []
    if problems:
        return problems
    if not container:
        return run_problems(config, cuda=cuda)
    here = locator(container=container, mounts=mounts)
    seen = [(here(path), path) for _, path in _paths(config)]
    problems = run_problems(_located(config, here), cuda=cuda)
    return [_naming_the_container_path(p, seen) for p in problems]


def _located(config: RunConfig, here: Callable[[str], str | None]) -> RunConfig:
    """``config`` with every path of the job replaced by where this machine sees it."""
    from rlad_megatron.tasks.registry import reference_file  # lazy, as in _paths

    model, data = config.model, config.data
    task = data.task
    task_file = reference_file(task)
    if task_file:
        task = f"{here(task_file)}:{task.rpartition(':')[2]}"
    model = dataclasses.replace(model, student=here(model.student) or model.student,
                                teacher=(here(model.teacher) or model.teacher) if model.teacher else model.teacher)
    data = dataclasses.replace(
        data, task=task,
        train_files=[f if f.startswith("hub:") else here(f) or f for f in data.train_files],
        eval_files=[f if f.startswith("hub:") else here(f) or f for f in data.eval_files])
    trainer = dataclasses.replace(config.trainer,
                                  output_dir=here(config.trainer.output_dir) or config.trainer.output_dir)
    return dataclasses.replace(config, model=model, data=data, trainer=trainer)


def _naming_the_container_path(problem: str, seen: list[tuple[str | None, str]]) -> str:
    """``problem`` (about a path as this machine sees it) with the container's path of that file added."""
    for host, inside in sorted(seen, key=lambda pair: -len(pair[0] or "")):
        if host and host != inside and host in problem:
            return f"{problem} (the container's {inside})"
    return problem
