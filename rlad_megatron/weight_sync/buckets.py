"""Group a stream of named tensors into buckets of bounded bytes (the only memory a sync holds at a time)."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

Named = tuple[str, torch.Tensor]


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def iter_buckets(named: Iterable[Named], bucket_bytes: int) -> Iterator[list[Named]]:
    """Yield consecutive lists of ``(name, tensor)`` whose total size is at most ``bucket_bytes``.

    Order is preserved. A tensor larger than ``bucket_bytes`` travels alone in its own bucket (it is never split:
    the engine's loaders need whole HF tensors). The input is consumed lazily, one bucket ahead at most.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[Named] = []
    size = 0
    for name, tensor in named:
        n = tensor_bytes(tensor)
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket
