"""NeMo-Run executors and the training task for a :class:`recipes.base.Recipe`, and launching it.

    recipe = get_recipe("logic_qwen3_0p6b")
    executor = slurm_executor(recipe, account="acct", partition="batch", container_image="rlad-megatron:0.1.0",
                              container_mounts=["/lustre/models:/models", "/lustre/data:/data",
                                                "/lustre/results:/results"])
    launch(recipe, executor, dryrun=True)        # renders <exp_dir>/<name>_sbatch.sh, submits nothing

On one machine -- this one (the local executor) or a one-node Slurm job -- the task is ``python -m
rlad_megatron.launch_local --nproc-per-node G -m rlad_megatron.cli train <overrides>`` (torchrun with every socket
on the loopback interface; under ``srun`` on Slurm). A job of several nodes runs NeMo-Run's ``torchrun --nnodes N
--nproc-per-node G ... -m rlad_megatron.cli train <overrides>`` under ``srun`` on each node: its rendezvous must
listen on the network for the other nodes.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from pathlib import Path
from typing import Any, Sequence

import nemo_run as run
from nemo_run.config import get_nemorun_home

from recipes.base import TRAIN_MODULE, Recipe

LOCAL_LAUNCHER = "rlad_megatron.launch_local"


def train_task(recipe: Recipe, *, local: bool = False, max_restarts: int = 0, shell_quoted: bool = False) -> run.Script:
    """The ``run.Script`` running ``python -m rlad_megatron.cli train <overrides>`` (NeMo-Run's torchrun wraps it in a
    job of several nodes, where the rendezvous must listen on the network).

    ``local``: the job runs on one machine and the task is the loopback launcher itself (``python -m
    rlad_megatron.launch_local --nproc-per-node G``: torchrun with every socket on the loopback interface, where
    NeMo-Run's torchrun and ``--standalone`` listen on every interface): the local executor and one-node Slurm jobs
    (:func:`one_machine`); ``max_restarts`` (local executor only): when a rank dies, torchrun restarts every rank, up
    to N times.
    ``shell_quoted``: for executors that paste the arguments into a shell script (Slurm's sbatch).
    """
    path, args = TRAIN_MODULE, recipe.train_args()
    if max_restarts and not local:
        raise ValueError("--max-restarts is for the local executor; on Slurm use --requeue")
    if local:
        options = [f"--nproc-per-node={recipe.ranks_per_node}"] + ([f"--max-restarts={max_restarts}"] if max_restarts
                                                                    else [])
        path, args = LOCAL_LAUNCHER, [*options, "-m", TRAIN_MODULE, *args]
    if shell_quoted:
        args = [_shell_word("a train argument", a) for a in args]
    return run.Script(path=path, m=True, args=args, entrypoint="python")


# NeMo-Run 0.11.1 pastes executor values into the sbatch script as they are (`export KEY=value`, the srun line,
# `#SBATCH --account=...`): every user value is quoted here, and newlines, which would add script lines, refused.
_SBATCH_SAFE = re.compile(r"^[\w.:,@+/=%-]*$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _one_line(what: str, value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise ValueError(f"{what}={value!r}: newlines are not allowed (they would add lines to the sbatch script)")
    return value


def _sbatch_value(what: str, value: str | None) -> str | None:
    """A value for an ``#SBATCH`` line, which sbatch reads without a shell: plain characters only."""
    if value is None:
        return None
    if not _SBATCH_SAFE.match(_one_line(what, value)):
        raise ValueError(f"{what}={value!r}: only letters, digits and _ . : , @ + / = % - are allowed here")
    return value


def _shell_word(what: str, value: str) -> str:
    return shlex.quote(_one_line(what, str(value)))


def _shell_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not _ENV_KEY.match(key):
            raise ValueError(f"environment variable name {key!r}: letters, digits and _ only")
    return {key: _shell_word(f"--env {key}", value) for key, value in env.items()}


def one_machine(recipe: Recipe, executor: Any) -> bool:
    """Whether the job runs on one machine (the local executor, or a one-node Slurm job): its ranks are started by
    the loopback launcher (``rlad_megatron.launch_local``), not by NeMo-Run's torchrun."""
    return isinstance(executor, run.LocalExecutor) or recipe.nodes == 1


def _env(recipe: Recipe, env: dict[str, str] | None) -> dict[str, str]:
    merged = dict(recipe.env)
    merged.update(env or {})
    return merged


def local_executor(recipe: Recipe, *, env: dict[str, str] | None = None) -> run.LocalExecutor:
    """torchrun with ``recipe.gpus_per_node`` processes on this machine (one node only); :func:`launch` runs it as
    ``rlad_megatron.launch_local`` (every socket on the loopback interface)."""
    if recipe.nodes != 1:
        raise ValueError(f"recipe {recipe.name} needs {recipe.nodes} nodes x {recipe.gpus_per_node} GPUs; the local "
                         "executor runs on this machine only: use --executor slurm, or --nodes 1 with a layout that "
                         "fits one machine")
    return run.LocalExecutor(ntasks_per_node=recipe.ranks_per_node, nodes=1, launcher="torchrun",
                             env_vars=_env(recipe, env))


def local_job_dir() -> str:
    """Where NeMo-Run writes (and, without SSH, submits) Slurm jobs: ``$NEMORUN_HOME/experiments``."""
    return os.path.join(get_nemorun_home(), "experiments")


def _check_local_job_dir(job_dir: str | None) -> None:
    """Without SSH, NeMo-Run never copies the job files anywhere: sbatch must read them where they were written.

    A ``LocalTunnel`` with a ``job_dir`` elsewhere fails at submission with ``sbatch: error: Unable to open file
    .../<name>_sbatch.sh``; refuse it here with what to do instead.
    """
    if job_dir is None or os.path.realpath(job_dir) == os.path.realpath(local_job_dir()):
        return
    raise ValueError(f"--job-dir {job_dir}: without --ssh-host the job is submitted from this machine, from "
                     f"NeMo-Run's own folder ({local_job_dir()}), and NeMo-Run copies job files only over SSH. "
                     "To keep the job files (and logs) elsewhere, e.g. on the cluster's shared filesystem, set "
                     f"NEMORUN_HOME=<that folder> instead; or add --ssh-host/--ssh-user to submit through SSH")


def slurm_executor(recipe: Recipe, *, account: str, partition: str | None = None, time: str = "04:00:00",
                   container_image: str | None = None, container_mounts: Sequence[str] = (),
                   job_dir: str | None = None, ssh_host: str | None = None, ssh_user: str | None = None,
                   env: dict[str, str] | None = None, qos: str | None = None,
                   exclusive: bool = True, requeue: bool = False) -> run.SlurmExecutor:
    """A Slurm job of ``recipe.nodes`` nodes with ``recipe.gpus_per_node`` GPUs (and torchrun ranks) each.

    One node: one ``srun`` task, the loopback launcher, which starts the ranks (every socket of the job on the
    loopback interface, as on this machine). Several nodes: NeMo-Run's torchrun launcher on each node.

    ``container_image``/``container_mounts`` go to pyxis (``srun --container-image``; mounts ``src:dst``).
    Without ``ssh_host`` the job is submitted from this machine (a login node, or a dry run anywhere) out of
    NeMo-Run's experiment folder (``job_dir`` must then be left unset; move it with ``NEMORUN_HOME``); with it,
    through an SSH tunnel, and ``job_dir`` is a directory on the cluster.
    ``requeue`` writes ``#SBATCH --requeue`` (the job may be requeued after a preemption or a node failure); pair
    it with ``trainer.resume=auto`` (see :func:`with_auto_resume`). NeMo-Run 0.11.1 submits every job with
    ``sbatch --requeue`` anyway (its command line wins over the script), so any job may be requeued: a requeued
    attempt continues its run by itself (rlad_megatron/run_lock.py, docs/reliability.md), and the job's log is
    appended to across attempts (``--open-mode=append``), keeping the first attempt's output.
    """
    if not account:
        raise ValueError("the Slurm executor needs an account: pass --account")
    for mount in container_mounts:
        if ":" not in mount:
            raise ValueError(f"container mount {mount!r}: expected host_path:container_path")
        if "," in mount:
            raise ValueError(f"container mount {mount!r}: pyxis separates mounts with ',', so a path cannot hold one")
    account = _sbatch_value("--account", account)
    partition, time, qos = (_sbatch_value(f"--{name}", value)
                            for name, value in (("partition", partition), ("time", time), ("qos", qos)))
    _sbatch_value("--job-dir", job_dir)
    container_image = _shell_word("--container-image", container_image) if container_image else None
    container_mounts = [_shell_word("--container-mount", m) for m in container_mounts]
    if ssh_host:
        if not ssh_user:
            raise ValueError("an SSH tunnel needs --ssh-user as well as --ssh-host")
        tunnel: Any = run.SSHTunnel(host=ssh_host, user=ssh_user,
                                    job_dir=job_dir or os.path.join(get_nemorun_home(), "slurm_jobs"))
    else:
        _check_local_job_dir(job_dir)
        tunnel = run.LocalTunnel(job_dir="")  # "": the experiment's own folder, where the sbatch script is written
    loopback = recipe.nodes == 1  # one srun task: rlad_megatron.launch_local starts the ranks (train_task)
    kwargs: dict[str, Any] = dict(
        account=account, partition=partition, time=time, nodes=recipe.nodes,
        ntasks_per_node=1 if loopback else recipe.gpus_per_node, container_image=container_image,
        container_mounts=list(container_mounts), env_vars=_shell_env(_env(recipe, env)), tunnel=tunnel,
        packager=run.Packager(), qos=qos, exclusive=exclusive or None, job_name_prefix=f"{account}-rlad.",
    )
    if recipe.gpu:
        kwargs["gpus_per_node"] = recipe.gpus_per_node
    if not loopback and recipe.ranks_per_node != recipe.gpus_per_node:  # disaggregated engines: not torchrun ranks
        kwargs["torchrun_nproc_per_node"] = recipe.ranks_per_node
    kwargs["additional_parameters"] = {"open_mode": "append", **({"requeue": True} if requeue else {})}
    executor = run.SlurmExecutor(**kwargs)
    if not loopback:
        executor.launcher = "torchrun"
    return executor


def with_absolute_paths(recipe: Recipe, *, container: bool, base: str | Path | None = None) -> Recipe:
    """The recipe with its output folder (and existing local model/data paths) made absolute against ``base``.

    A job does not run where it was launched: on Slurm, NeMo-Run starts it in the experiment's ``code`` folder, so a
    relative ``trainer.output_dir`` would land there. In a container the launcher's paths mean nothing: a relative
    output folder is refused instead.
    """
    config = recipe.config
    out = config.trainer.output_dir
    if os.path.isabs(out):
        pass
    elif container:
        raise ValueError(f"trainer.output_dir={out!r} is relative: inside the container it would land in NeMo-Run's "
                         "code folder. Give an absolute path on a mounted shared filesystem (e.g. /results/<run>)")
    else:
        out = str(Path(base or os.getcwd(), out).resolve())
    model, data = config.model, config.data
    if not container:
        def local(path: str | None) -> str | None:  # only paths that exist here: a hub name stays a hub name
            if path and not os.path.isabs(path) and Path(base or os.getcwd(), path).exists():
                return str(Path(base or os.getcwd(), path).resolve())
            return path

        model = dataclasses.replace(model, student=local(model.student) or "", teacher=local(model.teacher))
        data = dataclasses.replace(data, train_files=[local(f) or f for f in data.train_files],
                                   eval_files=[local(f) or f for f in data.eval_files])
    config = dataclasses.replace(config, model=model, data=data,
                                 trainer=dataclasses.replace(config.trainer, output_dir=out))
    return dataclasses.replace(recipe, config=config)


def with_auto_resume(recipe: Recipe, flag: str = "--requeue") -> Recipe:
    """The recipe set to continue by itself when restarted: ``trainer.resume=auto``, with checkpoints required.

    A requeued Slurm job runs the same script again, and torchrun's ``--max-restarts`` starts the same ranks again;
    with ``resume=auto`` the trainer resumes from the newest
    complete checkpoint in ``trainer.output_dir`` (which must be on a filesystem every node sees).
    """
    if not recipe.config.trainer.save_every:
        raise ValueError(f"{flag} needs checkpoints to resume from: set trainer.save_every=N (steps between "
                         "checkpoints)")
    return recipe.with_overrides(["trainer.resume=auto"])


def launch(recipe: Recipe, executor: run.LocalExecutor | run.SlurmExecutor, *, dryrun: bool = False,
           detach: bool = False, tail_logs: bool = False, experiment_name: str | None = None,
           max_restarts: int = 0, check_memory: bool = True) -> dict[str, Any]:
    """Check the recipe (its memory plan too, unless ``check_memory=False``), then run it in a NeMo-Run ``Experiment`` (or only render it with ``dryrun``).

    ``max_restarts`` (local executor only): torchrun restarts the ranks up to that many times after a rank fails
    (pair it with ``trainer.resume=auto``, :func:`with_auto_resume`).
    Returns ``{"experiment_dir": ..., "status": {...}, "logs": [...]}``: ``status`` is NeMo-Run's per-task status
    (empty for a dry run, whose rendered files are under ``experiment_dir``), ``logs`` the job's output files, and
    on Slurm ``sbatch`` the rendered script.
    """
    recipe.validate(check_memory=check_memory)
    recipe = with_absolute_paths(recipe, container=bool(getattr(executor, "container_image", None)))
    local = isinstance(executor, run.LocalExecutor)
    if max_restarts and not local:
        raise ValueError("--max-restarts is for the local executor; on Slurm use --requeue")
    if local:  # the task is the loopback-only launcher (rlad_megatron.launch_local), not NeMo-Run's torchrun
        executor = dataclasses.replace(executor, launcher=None, ntasks_per_node=1)
    # NeMo-Run 0.11.1 has no public accessor for an experiment's directory; ``_exp_dir`` is where it writes.
    experiment = run.Experiment(experiment_name or f"rlad-{recipe.name}")
    with experiment as exp:
        exp.add(train_task(recipe, local=one_machine(recipe, executor), max_restarts=max_restarts,
                           shell_quoted=isinstance(executor, run.SlurmExecutor)), executor=executor, name=recipe.name)
        if dryrun:
            exp.dryrun(delete_exp_dir=False)
            return {"experiment_dir": exp._exp_dir, "status": {}}
        exp.run(sequential=True, detach=detach, tail_logs=tail_logs)
    # A one-task experiment waits for its job when the `with` block exits: read the final states after it.
    status = {} if detach else (experiment.status(return_dict=True) or {})
    result = {"experiment_dir": experiment._exp_dir, "status": status, "logs": job_logs(experiment._exp_dir)}
    sbatch = Path(experiment._exp_dir) / f"{recipe.name}_sbatch.sh"
    if sbatch.exists():
        result["sbatch"] = str(sbatch)
    return result


def job_logs(experiment_dir: str | Path) -> list[str]:
    """The job's own output files under ``experiment_dir`` (Slurm: ``log-<job>_<id>_<n>.out``; the ranks' errors)."""
    root = Path(experiment_dir)
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix in (".out", ".err", ".log")
                  and "code" not in p.relative_to(root).parts)


def rendered_sbatch(experiment_dir: str | Path, recipe: Recipe) -> str:
    """The sbatch script a Slurm dry run wrote for ``recipe`` under ``experiment_dir``."""
    path = Path(experiment_dir) / f"{recipe.name}_sbatch.sh"
    if not path.exists():
        found = sorted(p.name for p in Path(experiment_dir).glob("*_sbatch.sh"))
        raise FileNotFoundError(f"no {path.name} under {experiment_dir} (found {found})")
    return path.read_text()
