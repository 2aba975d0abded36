"""The one device policy of a rank: where its models, batches and collective tensors live.

A rank of an NCCL job owns ``cuda:LOCAL_RANK``; a rank of a gloo job (or a process without CUDA) works on the CPU.
Every tensor that reaches a model or a collective is created on (or moved to) the device this module names, so
the rule lives here and nowhere else::

    dev = rank_device()                                    # the models' and batches' device
    t = torch.tensor(1.0, device=collective_device(group)) # a tensor for dist.all_reduce(t, group=group)
    with engine_call_guard(): engine.generate(...)         # the rank's current CUDA device survives vLLM

Collectives follow their group's backend, not the rank's device: Megatron also builds gloo groups on GPU jobs
(``*_gloo`` groups, the distributed optimizer's checkpoint gathers), and gloo all-reduces need CPU tensors.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist


def local_rank() -> int:
    """torchrun's ``LOCAL_RANK`` (0 outside torchrun)."""
    value = os.environ.get("LOCAL_RANK", "0") or "0"
    try:
        rank = int(value)
    except ValueError:
        raise ValueError(f"LOCAL_RANK={value!r} is not an integer: launch with torchrun or unset it") from None
    if rank < 0:
        raise ValueError(f"LOCAL_RANK={rank} must be >= 0")
    return rank


def _world_backend() -> str | None:
    if not dist.is_available() or not dist.is_initialized():
        return None
    return str(dist.get_backend())


def uses_cuda() -> bool:
    """True when this rank computes on a GPU: CUDA is present and the job's default group (if any) is NCCL."""
    if not torch.cuda.is_available():
        return False
    backend = _world_backend()
    return backend is None or "nccl" in backend


def rank_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when this rank computes on a GPU (:func:`uses_cuda`), else ``cpu``."""
    if not uses_cuda():
        return torch.device("cpu")
    index = local_rank()
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(
            f"LOCAL_RANK={index} but this node has {count} visible GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}): launch at most {count} ranks per node"
        )
    return torch.device("cuda", index)


def set_rank_device() -> torch.device:
    """Make :func:`rank_device` this process's current CUDA device (a no-op on CPU); returns it."""
    device = rank_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def collective_device(group: Any = None) -> torch.device:
    """Where a tensor given to a collective over ``group`` (None: the default group) must live: the rank's GPU
    for NCCL groups, the CPU for gloo groups."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())  # what torch's own object collectives use
    return torch.device("cpu")


def for_collective(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``t`` on :func:`collective_device` of ``group`` (the same tensor when it is already there)."""
    return t.to(collective_device(group))


def check_current_device(where: str) -> None:
    """Raise if the process's current CUDA device is no longer the rank's (something called ``set_device``)."""
    device = rank_device()
    if device.type != "cuda":
        return
    current = torch.cuda.current_device()
    if current != device.index:
        raise RuntimeError(
            f"after {where} the current CUDA device is cuda:{current}, but this rank owns cuda:{device.index} "
            "(LOCAL_RANK): a library moved the rank to another GPU; every later NCCL call would run there"
        )


@contextlib.contextmanager
def engine_call_guard(where: str) -> Iterator[None]:
    """Around a call into a rollout engine: restore the rank's current CUDA device afterwards (vLLM's worker calls
    ``torch.cuda.set_device`` at start-up and some paths read ``current_device``), then check it."""
    saved = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        if saved is not None:
            torch.cuda.set_device(saved)
        elif uses_cuda():
            torch.cuda.set_device(rank_device())
    check_current_device(where)
