"""Choose and build the rollout engine (and its weight-sync transport) for this rank.

One engine per data-parallel replica, on the first rank of each model-parallel group (TP rank 0 of the first
pipeline stage: the rank where ``iter_hf_tensors(..., dst_only=True)`` delivers the full tensors). The other ranks
get ``(None, None)`` and take part in syncs only through the gathers.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.device import local_rank, uses_cuda
from rlad_megatron.rollout.vllm_engine import VLLMEngine
from rlad_megatron.rollout.vllm_remote import RemoteVLLMEngine
from rlad_megatron.weight_sync.dist_transport import TorchDistTransport
from rlad_megatron.weight_sync.inprocess import InProcessTransport


def is_engine_rank(config: VLLMEngineConfig | None = None) -> bool:
    """Whether this rank holds an engine: every rank with ``executor="external_launcher"`` (each holds one shard
    of its TP group's engine), else the first rank of this rank's model-parallel group (or without Megatron
    parallel state)."""
    if config is not None and config.executor == "external_launcher":
        return True
    return is_leader_rank()


def is_leader_rank() -> bool:
    """The first rank of this rank's model replica (TP x CP x PP): where rollouts are scored and from where they are
    shared (and, with one engine per replica, the engine rank)."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    if not ps.model_parallel_is_initialized():
        return True
    return (ps.get_tensor_model_parallel_rank() == 0 and ps.get_pipeline_model_parallel_rank() == 0
            and ps.get_context_parallel_rank() == 0)


def build_rollout_engine(config: VLLMEngineConfig) -> tuple[Any, Any]:
    """``(engine, transport)`` on engine ranks, ``(None, None)`` elsewhere.

    ``config.placement == "colocated"``: a ``VLLMEngine`` in this process and an ``InProcessTransport``.
    ``"disaggregated"``: a ``RemoteVLLMEngine`` (own process) and a ``TorchDistTransport`` (pair gloo group).
    """
    config.validate()
    gpu = disaggregated_engine_gpu() if config.placement == "disaggregated" else None  # collective: before the return
    if not is_engine_rank(config):
        return None, None
    if config.executor == "external_launcher":
        if config.placement != "colocated":
            raise ValueError("executor='external_launcher' shards the engine over the learner's own ranks: it needs "
                             "placement='colocated'")
        check_engine_groups_match_learner(config.tensor_parallel_size)
    if config.placement == "colocated":
        engine = VLLMEngine(config)
        return engine, InProcessTransport(engine)

    engine = RemoteVLLMEngine(config, gpu=gpu)
    return engine, TorchDistTransport(engine)


def check_engine_groups_match_learner(engine_tp: int) -> None:
    """vLLM's external launcher makes its TP groups from contiguous world ranks ``[k*tp, (k+1)*tp)``; a shard only
    holds the learner's own tensor-parallel slice of the work if that block is this rank's Megatron TP group."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    rank, world = dist.get_rank(), dist.get_world_size()
    if world % engine_tp:
        raise ValueError(f"engine tensor_parallel_size={engine_tp} does not divide the world size {world}")
    block = list(range(rank - rank % engine_tp, rank - rank % engine_tp + engine_tp))
    if ps.model_parallel_is_initialized():
        learner = dist.get_process_group_ranks(ps.get_tensor_model_parallel_group())
        if sorted(learner) != block:
            raise RuntimeError(
                f"rank {rank}: vLLM's external launcher would group ranks {block} into one engine, but the learner's "
                f"tensor-parallel group is {sorted(learner)}: the engine TP must equal the learner's "
                "(parallel.tensor_parallel) with Megatron's default rank order"
            )


def disaggregated_engine_gpu(slot: int = 0) -> int | None:
    """The node-local GPU of this rank's disaggregated engine process (None on CPU or off the engine ranks).

    The job's ranks own GPUs ``0 .. LOCAL_WORLD_SIZE-1`` of their node (torchrun's ``--nproc-per-node``: the
    learner's ranks, and a Megatron teacher pool's when it shares the node); the engines of the node's
    model-parallel leaders take the GPUs after those, one each, in local-rank order: ``slot`` 0 the rollout engines,
    ``slot`` 1 the vLLM teacher engines of a separate teacher after the rollout engines (``slot`` 0 too when the
    rollout engine is colocated). Collective over the world (every rank calls it).
    """
    if not uses_cuda():
        return None
    mine = (socket.gethostname(), local_rank(), is_leader_rank())
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if not mine[2]:
        return None
    learner_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or sum(1 for h, *_ in everyone if h == mine[0])
    return engine_gpu_index(everyone, mine, learner_gpus, torch.cuda.device_count(), slot=slot)


def engine_gpu_index(everyone: list[tuple[str, int, bool]], mine: tuple[str, int, bool], learner_gpus: int,
                     device_count: int, *, slot: int = 0) -> int:
    """The GPU of ``mine``'s engine: after the node's ``learner_gpus`` and ``slot`` earlier engines per leader, by
    local-rank order of the node's leaders. ``everyone``: ``(host, local_rank, is_leader)`` of every rank."""
    host, rank, _ = mine
    leaders = sorted(lr for h, lr, leader in everyone if h == host and leader)
    gpu = learner_gpus + slot * len(leaders) + leaders.index(rank)
    if gpu >= device_count:
        engines = (slot + 1) * len(leaders)
        raise RuntimeError(
            f"engines of their own (rollout.placement=disaggregated, teacher.placement=separate with a vLLM teacher): "
            f"node {host} runs {learner_gpus} ranks and {engines} engine processes but has {device_count} GPUs; "
            f"the engines need GPUs of their own after the ranks': launch torchrun with --nproc-per-node <= "
            f"{device_count - engines} (rlad-megatron launch does so when given the engines' GPUs: --rollout-gpus, "
            f"--teacher-gpus)"
        )
    return gpu
