"""Process-group and Megatron parallel-state setup for one SPMD program (torchrun or the test harness).

On a machine without CUDA this is where the CPU compatibility patches get applied, so every entry point that builds
Megatron models goes through ``initialize_model_parallel``.
"""
from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import torch
import torch.distributed as dist

from rlad_megatron import loopback
from rlad_megatron.compat import megatron_cpu, megatron_fallbacks
from rlad_megatron.device import set_rank_device


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> None:
    """Join the process group described by torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    Without those variables, starts a one-process group on a free local port, so that single-process tools and
    tests run the same code as multi-process jobs. When torchrun's agent hosts no store for the ranks
    (``rlad_megatron.launch_local``, the test harness), global rank 0 hosts it; on a loopback ``MASTER_ADDR``
    (every rank on this machine) that store and gloo listen on the loopback interface only (``loopback``).
    """
    if dist.is_initialized():
        return
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    backend = backend or default_backend()
    if backend == "nccl":
        set_rank_device()  # before the group exists: NCCL and torch's object collectives use the current device
    timeout = datetime.timedelta(seconds=timeout_s)

    if loopback.is_loopback(os.environ["MASTER_ADDR"]):
        loopback.use_loopback_gloo()
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = loopback.tcp_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                   is_master=rank == 0, timeout=timeout, multi_tenant=True)
        dist.init_process_group(backend=backend, timeout=timeout, rank=rank, world_size=world, store=store)
        return
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart:
        # After `torchrun --max-restarts` restarts the ranks, they reuse the agent's store, which still holds the
        # dead ranks' addresses under the same group keys: new gloo groups would wait forever to connect to them
        # (measured with torch 2.13). Keys under a per-attempt prefix start clean.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
        dist.init_process_group(backend=backend, timeout=timeout, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]),
                                store=dist.PrefixStore(f"rlad_attempt_{restart}", store))
        return
    dist.init_process_group(backend=backend, timeout=timeout)


def share_from_one(value: Any, group, *, required: bool = True) -> Any:
    """The one non-None ``value`` among the ranks of ``group``, on every rank of it (small Python objects)."""
    if group is None or dist.get_world_size(group) == 1:
        return value
    values: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    found = [v for v in values if v is not None]
    if not found:
        if not required:
            return None
        raise RuntimeError("share_from_one: no rank of the group provided a value")
    return found[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apply_megatron_compat() -> frozenset[str]:
    """Make megatron-core usable here before any of it runs: the CPU patches on a machine without CUDA, and on every
    machine the fixes of the Transformer-Engine-less fallbacks megatron-core takes (``rlad_megatron.compat``).
    Returns the fallback fixes applied."""
    megatron_cpu.apply()
    return megatron_fallbacks.apply()


def initialize_model_parallel(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    *,
    virtual_pipeline_parallel: int | None = None,
    seed: int = 1234,
    expert_parallel: int = 1,
    context_parallel: int = 1,
) -> None:
    """Set up Megatron's TP/PP/CP/DP groups over the current world and seed the model-parallel RNG tracker.

    Data parallelism is what is left: ``world_size / (tensor_parallel * pipeline_parallel * context_parallel)``.
    Expert parallelism (MoE) shards the experts over ``expert_parallel`` data-parallel ranks (expert tensor parallel
    size 1). Context parallelism splits each sequence over ``context_parallel`` ranks (TE's attention on GPUs, our
    all-gather attention on the local spec otherwise: ``models.builder.layer_spec``).
    """
    if context_parallel < 1:
        raise ValueError(f"context parallel size must be >= 1, got {context_parallel}")
    init_distributed()
    world = dist.get_world_size()
    model_size = tensor_parallel * pipeline_parallel * context_parallel
    if world % model_size != 0:
        cp = f" x context_parallel ({context_parallel})" if context_parallel > 1 else ""
        raise ValueError(
            f"world size {world} is not divisible by tensor_parallel ({tensor_parallel}) x pipeline_parallel "
            f"({pipeline_parallel}){cp} = {model_size}: launch a multiple of that many ranks"
        )
    dp = world // model_size
    if expert_parallel < 1 or (world // pipeline_parallel) % expert_parallel:
        raise ValueError(
            f"expert parallel size {expert_parallel} must divide world size {world} / pipeline_parallel "
            f"{pipeline_parallel} (experts are sharded over the ranks of one pipeline stage; data parallel size is "
            f"{dp}): choose it among the divisors of {world // pipeline_parallel}"
        )
    apply_megatron_compat()
    from megatron.core import parallel_state, tensor_parallel as mcore_tp  # lazy: megatron-core is heavy (seconds)

    if parallel_state.model_parallel_is_initialized():
        destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline_parallel,
        context_parallel_size=context_parallel,
        expert_model_parallel_size=expert_parallel,
        expert_tensor_parallel_size=1,
    )
    mcore_tp.model_parallel_cuda_manual_seed(seed)


_REPLICA_GROUP: Any = None


def data_parallel_group():
    """Megatron's data-parallel group of this rank (model parallelism initialised)."""
    from megatron.core import parallel_state as ps  # megatron-core stays out of `import rlad_megatron.parallel`

    return ps.get_data_parallel_group()


def data_parallel_rank_and_size() -> tuple[int, int]:
    """This rank's data-parallel rank and the data-parallel size."""
    from megatron.core import parallel_state as ps  # as above

    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def is_last_pipeline_stage() -> bool:
    """Whether this rank holds the last pipeline stage (where logits and the loss are)."""
    from megatron.core import parallel_state as ps  # as above

    return ps.is_pipeline_last_stage(ignore_virtual=True)


def replica_group():
    """The ranks of this rank's model replica: tensor x context x pipeline parallel (every rank with this rank's
    data-parallel rank). Megatron's model-parallel group is TP x PP only; under context parallelism the CP ranks
    of a replica hold the same sequences too, so rollouts are shared and metrics reduced over this group.
    ``get_model_parallel_group()`` itself at CP=1. Collective over the world on its first call at CP > 1."""
    global _REPLICA_GROUP
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    if ps.get_context_parallel_world_size() == 1:
        return ps.get_model_parallel_group()
    if _REPLICA_GROUP is None:
        dp_ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(dp_ranks, ps.get_data_parallel_rank())
        mine = ps.get_data_parallel_rank()
        for d in sorted(set(dp_ranks)):  # every rank creates every group, in the same order
            group = dist.new_group([r for r, x in enumerate(dp_ranks) if x == d])
            if d == mine:
                _REPLICA_GROUP = group
    return _REPLICA_GROUP


def destroy_model_parallel() -> None:
    global _REPLICA_GROUP
    from megatron.core import parallel_state  # lazy: megatron-core is heavy (seconds)

    _REPLICA_GROUP = None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
