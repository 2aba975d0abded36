"""Transport into a disaggregated engine (own process): tensors over a two-rank torch.distributed group.

The group joins only the learner's sending rank (pair rank 0) and the engine process (pair rank 1). It is a
standalone process group on its own ``TCPStore``, so it neither needs nor disturbs the learner's world: gloo
when the learner's tensors are on the CPU, NCCL when they are on a GPU (gloo has no point-to-point for CUDA
tensors); each side's current CUDA device is its own GPU. Control messages (which tensors follow) go over the
engine's command pipe; the bytes go over the group, one ``send`` per tensor, received into one reusable flat
buffer per bucket on the engine's device.
"""
from __future__ import annotations

import datetime
from typing import Iterator

import torch
import torch.distributed as dist

from rlad_megatron.loopback import loopback_interface, tcp_store
from rlad_megatron.weight_sync.buckets import Named

TensorMeta = tuple[str, str, tuple[int, ...]]
"""(hf name, dtype name, shape) of one tensor of a bucket."""


def pair_store(host: str = "127.0.0.1", *, timeout_s: float = 300.0) -> dist.TCPStore:
    """Rank 0's store on a free port (``store.port``), created before the engine process is started (listening on
    the loopback interface only for a loopback ``host``: the engine process runs on this machine)."""
    return tcp_store(host, 0, 2, is_master=True, timeout=datetime.timedelta(seconds=timeout_s),
                     wait_for_workers=False)


def connect_store(host: str, port: int, *, timeout_s: float = 300.0) -> dist.TCPStore:
    """Rank 1's (the engine process's) client of rank 0's store."""
    return dist.TCPStore(host, port, world_size=2, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))


PAIR_BACKENDS: tuple[str, ...] = ("gloo", "nccl")


def pair_backend(cuda: bool) -> str:
    """The pair group's backend for a learner whose tensors live on a GPU (``cuda``) or on the CPU."""
    return "nccl" if cuda else "gloo"


def join_pair_group(store, rank: int, *, timeout_s: float = 300.0, backend: str = "gloo"):
    """The two-rank group (both ranks call it with the same ``backend``). NCCL groups connect lazily, at the first
    send, on the caller's current CUDA device."""
    if backend not in PAIR_BACKENDS:
        raise ValueError(f"join_pair_group: backend={backend!r}: choose one of {PAIR_BACKENDS}")
    prefix = dist.PrefixStore("rlad_weight_sync", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "gloo":  # both ends on this machine: gloo listens on the loopback interface, whatever the job's

        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(interface=loopback_interface())]
        return dist.ProcessGroupGloo(prefix, rank, 2, options)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(prefix, rank, 2, options)


def bucket_meta(bucket: list[Named]) -> list[TensorMeta]:
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in bucket]


def send_tensors(group, bucket: list[Named], peer: int) -> None:
    """Send the bucket's tensors, in order, to ``peer`` (contiguous tensors are sent without a copy)."""
    works = [group.send([t.contiguous()], peer, i) for i, (_, t) in enumerate(bucket)]
    for work in works:
        work.wait()


class BucketReceiver:
    """The engine side: receive a bucket into a flat byte buffer reused across buckets (grown when needed)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._buffer = torch.empty(0, dtype=torch.uint8, device=self.device)

    def receive(self, group, meta: list[TensorMeta], peer: int) -> list[Named]:
        views = []
        sizes = [torch.Size(shape).numel() * getattr(torch, dtype).itemsize for _, dtype, shape in meta]
        if self._buffer.numel() < sum(sizes):
            self._buffer = torch.empty(sum(sizes), dtype=torch.uint8, device=self.device)
        offset = 0
        for (name, dtype, shape), size in zip(meta, sizes):
            view = self._buffer[offset:offset + size].view(getattr(torch, dtype)).view(shape)
            views.append((name, view))
            offset += size
        works = [group.recv([view], peer, i) for i, (_, view) in enumerate(views)]
        for work in works:
            work.wait()
        return views


class TorchDistTransport:
    """Learner side of a disaggregated sync, through a ``RemoteVLLMEngine`` (its pipe and its pair group)."""

    def __init__(self, remote_engine) -> None:
        self.engine = remote_engine

    def send(self, version: int, buckets: Iterator[list[Named]]) -> None:
        self.engine.begin_sync(version)
        for bucket in buckets:
            self.engine.send_bucket(bucket)
        self.engine.finish_sync(version)

