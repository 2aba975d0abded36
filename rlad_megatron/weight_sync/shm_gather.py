"""Full HF tensors from TP shards through shared memory, for a tensor-parallel group on one host (PP=1).

Same output as ``rlad_megatron.models.hf_export.iter_hf_tensors(chunks, arch, dst_only=True)`` (same names, order
and values), without sending the shards through the process group: on CPU, gloo over loopback moves ~0.3 GB/s on
our 2-core machine, 10x slower than a memcpy, and dominated the sync. Here each TP rank other than 0 copies its
shards, one bucket at a time, into a shared-memory region that TP rank 0 maps; two barriers per bucket order the
writes and the reads. Memory: one region of ``bucket_bytes`` per non-zero TP rank (the files are unlinked as soon as
both sides have mapped them, so nothing is left behind in /dev/shm, even after a crash).

COLLECTIVE over the tensor-parallel group (all its ranks iterate to the end); only TP rank 0 yields.
"""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import torch
import torch.distributed as dist

from rlad_megatron.models.name_map import hf_groups, megatron_full_to_hf, owned_params
from rlad_megatron.weight_sync.buckets import Named, tensor_bytes

SHM_DIR = "/dev/shm"


def _plan(groups, owned: dict[str, torch.Tensor], bucket_bytes: int) -> list[list]:
    """Split the TP-sharded groups, in order, into buckets of at most ``bucket_bytes`` of one rank's shards."""
    buckets, current, size = [], [], 0
    for group in groups:
        n = tensor_bytes(owned[group.key]) if group.tp_dim is not None else 0
        if current and size + n > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(group)
        size += n
    if current:
        buckets.append(current)
    return buckets


class ShmTensorGather:
    """Reusable gatherer (keeps its shared-memory regions between syncs). ``close()`` releases them."""

    def __init__(self, bucket_bytes: int = 128 << 20) -> None:
        from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

        if ps.get_pipeline_model_parallel_world_size() != 1:
            raise ValueError("ShmTensorGather supports PP=1 only; use gather='collective' with pipeline parallelism")
        if bucket_bytes <= 0:
            raise ValueError(f"ShmTensorGather: bucket_bytes must be positive, got {bucket_bytes}")
        self.bucket_bytes = bucket_bytes
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.tp_size = ps.get_tensor_model_parallel_world_size()
        self._regions: list[torch.Tensor | None] = []
        self._capacity = 0

    def _barrier(self) -> None:
        if self.tp_size > 1:
            dist.barrier(group=self.tp_group)

    def _ensure_regions(self, nbytes: int) -> None:
        """Create (rank r > 0) and map (rank 0 and r) one region of ``nbytes`` per non-zero TP rank."""
        if nbytes <= self._capacity or self.tp_size == 1:
            return
        token = [uuid.uuid4().hex if self.tp_rank == 0 else None]
        dist.broadcast_object_list(token, src=dist.get_global_rank(self.tp_group, 0), group=self.tp_group)
        paths = [os.path.join(SHM_DIR, f"rlad_ws_{token[0]}_{r}") for r in range(self.tp_size)]
        if self.tp_rank > 0:
            self._regions = [None] * self.tp_size
            self._regions[self.tp_rank] = torch.from_file(paths[self.tp_rank], shared=True, size=nbytes,
                                                          dtype=torch.uint8)
        self._barrier()  # files exist
        if self.tp_rank == 0:
            self._regions = [None] + [torch.from_file(p, shared=True, size=nbytes, dtype=torch.uint8)
                                      for p in paths[1:]]
        self._barrier()  # both sides mapped
        if self.tp_rank > 0:
            os.unlink(paths[self.tp_rank])
        self._capacity = nbytes

    def iter_hf_tensors(self, model_chunks: list[torch.nn.Module], arch) -> Iterator[Named]:
        """Yield ``(hf_name, tensor)`` on TP rank 0 (fresh tensors, not aliasing parameters or shared memory)."""
        owned = owned_params(model_chunks, arch)
        buckets = _plan(hf_groups(arch), owned, self.bucket_bytes)
        need = max(sum(tensor_bytes(owned[g.key]) for g in b if g.tp_dim is not None) for b in buckets)
        self._ensure_regions(need)
        for bucket in buckets:
            offsets, offset = {}, 0
            for group in bucket:
                if group.tp_dim is not None:
                    offsets[group.key] = offset
                    offset += tensor_bytes(owned[group.key])
            if self.tp_rank > 0:
                region = self._regions[self.tp_rank]
                for key, start in offsets.items():
                    shard = owned[key]
                    region[start:start + tensor_bytes(shard)].view(shard.dtype).view(shard.shape).copy_(shard)
            self._barrier()  # shards written
            if self.tp_rank == 0:
                for group in bucket:
                    shards = [owned[group.key]]
                    if group.tp_dim is not None:
                        shard = owned[group.key]
                        start = offsets[group.key]
                        shards += [r[start:start + tensor_bytes(shard)].view(shard.dtype).view(shard.shape)
                                   for r in self._regions[1:]]
                    for name, tensor in zip(group.hf_names, megatron_full_to_hf(group, shards, arch)):
                        if any(_shares_storage(tensor, s) for s in shards):
                            tensor = tensor.clone()
                        yield name, tensor.contiguous()
            self._barrier()  # shards read: the regions may be overwritten

    def close(self) -> None:
        self._regions = []
        self._capacity = 0


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
