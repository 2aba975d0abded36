"""The shared-memory TP gather yields exactly what ``iter_hf_tensors(..., dst_only=True)`` yields (names, order,
bits), over several buckets and across reuses, and leaves nothing in /dev/shm."""
from __future__ import annotations

import pytest

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def _body(hf_dir: str) -> dict:
    import os

    import torch

    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import iter_hf_tensors
    from rlad_megatron.weight_sync.shm_gather import SHM_DIR, ShmTensorGather

    chunks, arch = load_hf_model(hf_dir)
    gather = ShmTensorGather(bucket_bytes=8 << 10)  # many buckets
    checks = []
    for round_ in range(2):
        ours = list(gather.iter_hf_tensors(chunks, arch))
        ref = list(iter_hf_tensors(chunks, arch, dst_only=True))
        checks.append([n for n, _ in ours] == [n for n, _ in ref]
                      and all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for (_, a), (_, b) in zip(ours, ref)))
        checks.append(len(ours) > 0 if torch.distributed.get_rank() == 0 else len(ours) == 0)
        with torch.no_grad():
            for p in chunks[0].parameters():
                p.add_(1.0)
    leftovers = [f for f in os.listdir(SHM_DIR) if f.startswith("rlad_ws_")]
    return {"checks": checks, "leftovers": leftovers}


def test_shm_gather_equals_collective_gather(tmp_path):
    hf_dir = make_tiny_hf_model(tmp_path / "qwen2", family="qwen2", seed=3)  # qkv bias: every kind of group
    for r in run_distributed(_body, world_size=2, tp=2, args=(str(hf_dir),), timeout=240):
        assert all(r["checks"]), r
        assert r["leftovers"] == []
