"""The trainer's teacher when it lives in a pool of its own (``teacher.placement: separate``), built on every learner
rank (collective over the learner's world): the replica leaders hold the pool's client, the other ranks receive
the leader's results.

- ``teacher.source: megatron``: the job's teacher ranks (:mod:`rlad_megatron.pools.world`), reached over the bridge;
- ``teacher.source: vllm``: one teacher engine process per learner replica, started by its leader like a
  disaggregated rollout engine (``RemoteVLLMEngine``), on the GPU after the node's ranks and rollout engines; on CPU
  pinned to the rollout engine's cores when those are pinned (``rollout.engine_cpus``: the teacher then scores on
  the cores that generate, while the learner keeps its own), else to the job's cores, one thread each.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch.distributed as dist

from rlad_megatron.pools.teacher import PooledTeacher


def replica_leader(group: Any) -> int:
    """The default-group rank of ``group``'s leader (TP rank 0 of the first pipeline stage, CP rank 0)."""
    from rlad_megatron.rollout.factory import is_leader_rank

    ranks = dist.get_process_group_ranks(group) if group is not None else [dist.get_rank()]
    if len(ranks) == 1:
        return ranks[0]
    flags: list = [None] * len(ranks)
    dist.all_gather_object(flags, is_leader_rank(), group=group)
    return ranks[flags.index(True)]


def teacher_engine_config(config, engine_config):
    """The teacher engine's settings: the rollout engine's, serving the teacher, in a process of its own, never
    synced (vLLM's pre-packed GEMMs kept), never asleep."""
    cores = engine_config.cpu_cores
    if not cores and not _cuda():
        cores = tuple(sorted(os.sched_getaffinity(0)))
    return dataclasses.replace(engine_config, model=config.model.teacher, placement="disaggregated",
                               executor="uni", tensor_parallel_size=1, weight_load="vllm_reload",
                               enable_sleep_mode=False, gpu_memory_utilization=None, quantization=None,
                               cpu_cores=() if _cuda() else cores,
                               max_logprobs=max(20, config.loss.topk_k) if config.loss.uses_topk() else None)


def _cuda() -> bool:
    from rlad_megatron.device import uses_cuda

    return uses_cuda()


def build_pooled_teacher(config, engine_config, replica_group: Any, dp_rank: int) -> PooledTeacher:
    """The pooled teacher of this learner rank (collective over the learner's world)."""
    from rlad_megatron.config import teacher_pool

    kind = teacher_pool(config)
    leader = replica_leader(replica_group)
    mine = dist.get_rank() == leader
    client = None
    if kind == "megatron":
        from rlad_megatron.pools.client import MegatronPoolClient
        from rlad_megatron.pools.world import bridge_group, bridge_sizes, current_job

        job = current_job()
        if job is None or job.role != "learner":
            raise RuntimeError("a Megatron teacher pool needs the job split by role first (pools.world.join_job)")
        learners, teachers = bridge_sizes(config, job)
        if mine:
            bridge = bridge_group(job, dp_rank, learners + teachers)
            client = MegatronPoolClient(bridge, list(range(learners, learners + teachers)))
    elif kind == "vllm":
        from rlad_megatron.rollout.factory import disaggregated_engine_gpu

        gpu = disaggregated_engine_gpu(slot=1 if config.rollout.placement == "disaggregated" else 0)  # collective
        if mine:
            from rlad_megatron.models.teacher import check_tokenizer_compatible
            from rlad_megatron.pools.client import EngineScoreClient
            from rlad_megatron.rollout.vllm_remote import RemoteVLLMEngine

            check_tokenizer_compatible(config.model.student, config.model.teacher)
            client = EngineScoreClient(RemoteVLLMEngine(teacher_engine_config(config, engine_config), gpu=gpu))
    else:
        raise ValueError(f"build_pooled_teacher: this run has no teacher pool (teacher.placement="
                         f"{config.teacher.placement!r}, loss.algorithm={config.loss.algorithm!r})")
    if dist.get_rank() == 0:
        from rlad_megatron.console import say
        from rlad_megatron.pools.world import node_name

        where = "the job's teacher ranks" if kind == "megatron" else "a vLLM engine process per learner replica"
        say(f"[rlad] teacher pool ({kind}): the teacher scores in {where}; learner rank 0 on node {node_name()}")
    return PooledTeacher(client, replica_group, leader=leader,
                         topk=config.loss.topk_k if config.loss.uses_topk() else 0)
