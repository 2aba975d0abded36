"""One torchrun job, two worlds: the learner's ranks and a Megatron teacher pool's ranks (``teacher.placement:
separate``, ``teacher.source: megatron``), joined by a bridge group of their replica leaders.

    job = join_job(config)          # collective over the whole job; afterwards the default group is the role's
    if job.role == "teacher": serve the teacher (pools/teacher_rank.py) else: train

The job's last ``teacher.ranks`` ranks are teacher ranks (on a cluster: the last node(s), when ``teacher.ranks`` is
a multiple of the GPUs per node). Each role gets a default process group of its own over the job's store, so that
Megatron's parallel state, every collective of the trainer and of the teacher, and ``dist.get_rank()`` /
``get_world_size()`` see only that role's ranks, exactly as in a job of that role alone: the learner's code runs
unchanged. ``RANK`` / ``WORLD_SIZE`` follow (the job's values stay in ``RLAD_JOB_RANK`` / ``RLAD_JOB_WORLD_SIZE``);
``LOCAL_RANK`` keeps naming the rank's GPU and ``LOCAL_WORLD_SIZE`` the job's ranks on this node (the learner's
disaggregated engines take the GPUs after all of them).

The bridge (:func:`bridge_group`) is a standalone gloo group of the learner's and the pool's replica leaders on the
same store: learner leaders are bridge ranks ``0 .. DP_learner - 1`` (by data-parallel rank), teacher leaders follow
(``DP_learner + `` their data-parallel rank). Only the leaders build it; messages are :mod:`rlad_megatron.pools.wire`'s.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch.distributed as dist

#: How long the bridge waits for a message: a teacher replica waits a whole learner step (generation, training,
#: evaluation, a checkpoint) for its next request.
BRIDGE_TIMEOUT_S = 6 * 3600.0


@dataclasses.dataclass(frozen=True)
class JobRoles:
    """This rank's place in the job."""

    role: str
    """"learner" or "teacher"."""
    job_rank: int
    job_size: int
    teacher_ranks: int
    store: Any = None
    """The job's store (the bridge's rendezvous); None without a teacher pool."""

    @property
    def learner_ranks(self) -> int:
        return self.job_size - self.teacher_ranks


_JOB: JobRoles | None = None


def current_job() -> JobRoles | None:
    """The roles :func:`join_job` set up in this process (None: no pool, or not called)."""
    return _JOB


def role_split(job_rank: int, job_size: int, teacher_ranks: int) -> tuple[str, int, int]:
    """``(role, rank in the role's world, size of the role's world)``: the last ``teacher_ranks`` ranks teach."""
    if teacher_ranks < 0 or teacher_ranks >= job_size:
        from rlad_megatron.config import ConfigError

        raise ConfigError(f"teacher.ranks={teacher_ranks} leaves no learner rank in a job of {job_size} ranks: launch "
                          "learner ranks + teacher.ranks ranks (torchrun --nnodes x --nproc-per-node)")
    first_teacher = job_size - teacher_ranks
    if job_rank >= first_teacher:
        return "teacher", job_rank - first_teacher, teacher_ranks
    return "learner", job_rank, first_teacher


def join_job(config, *, backend: str | None = None, timeout_s: float = 600.0) -> JobRoles:
    """Join the job and, with a Megatron teacher pool, split it by role (collective over the whole job).

    Without a Megatron teacher pool nothing happens here (the trainer joins its world as it always did) and every
    rank is a learner rank."""
    global _JOB
    from rlad_megatron.config import teacher_pool

    if teacher_pool(config) != "megatron":
        _JOB = None
        return JobRoles("learner", int(os.environ.get("RANK", "0") or 0),
                        int(os.environ.get("WORLD_SIZE", "1") or 1), 0)
    return split_world(config.teacher.ranks, backend=backend, timeout_s=timeout_s)


def split_world(teacher_ranks: int, *, backend: str | None = None, timeout_s: float = 600.0) -> JobRoles:
    """Join the job (if not joined yet), then make the default group this rank's role's world."""
    global _JOB
    from rlad_megatron.parallel import init_distributed

    init_distributed(backend, timeout_s)
    rank, size = dist.get_rank(), dist.get_world_size()
    role, role_rank, role_size = role_split(rank, size, teacher_ranks)
    store = dist.distributed_c10d._get_default_store()
    backend = dist.get_backend()
    dist.barrier()  # every rank has joined the job before any leaves its world
    dist.destroy_process_group()
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"rlad_{role}_world", store), rank=role_rank,
                            world_size=role_size, timeout=datetime.timedelta(seconds=timeout_s))
    os.environ.update(RLAD_JOB_RANK=str(rank), RLAD_JOB_WORLD_SIZE=str(size), RANK=str(role_rank),
                      WORLD_SIZE=str(role_size))
    _JOB = JobRoles(role, rank, size, teacher_ranks, store)
    return _JOB


def node_name() -> str:
    """This rank's node: Slurm's name for it in a Slurm job, else the host name (for the pool's start-up lines)."""
    import socket

    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def bridge_group(job: JobRoles, bridge_rank: int, bridge_size: int, *, timeout_s: float = BRIDGE_TIMEOUT_S):
    """The bridge of the replica leaders (every leader of both roles calls it; blocks until all have)."""
    if job.store is None:
        raise RuntimeError("the teacher pool's bridge needs the job's store: call join_job first")
    if not 0 <= bridge_rank < bridge_size:
        raise ValueError(f"bridge rank {bridge_rank} outside a bridge of {bridge_size}")
    return dist.ProcessGroupGloo(dist.PrefixStore("rlad_pool_bridge", job.store), bridge_rank, bridge_size,
                                 datetime.timedelta(seconds=timeout_s))


def bridge_sizes(config, job: JobRoles) -> tuple[int, int]:
    """``(learner replicas, teacher replicas)``: the learner's and the pool's data-parallel sizes."""
    p, t = config.parallel, config.teacher
    learner = job.learner_ranks // (p.tensor_parallel * p.pipeline_parallel * p.context_parallel)
    return learner, job.teacher_ranks // (t.tensor_parallel * t.pipeline_parallel)
