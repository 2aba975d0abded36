"""R4: with ``fp8.fp8_params=true`` the student's linear weights are Transformer Engine FP8 tensors (FP8 bytes and a
scale). The HF export and the weight sync gather the values they stand for, not the bytes: checked at TP=2 through a
stand-in tensor subclass (TE needs a GPU), on every gather path (all-gather, gather to TP rank 0, shared memory)."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.distributed

SCALE_INV = 0.125  # a power of two: bytes * scale_inv gives the values back exactly


class FakeFloat8(torch.Tensor):
    """Stands in for TE's ``Float8Tensor``: its storage holds ``values / scale_inv`` (the "FP8 bytes"), and
    ``dequantize()`` gives the values back in the nominal dtype."""

    @staticmethod
    def __new__(cls, values: torch.Tensor, scale_inv: float):
        t = (values / scale_inv).as_subclass(cls)
        t._scale_inv = scale_inv
        return t

    def detach(self):
        out = super().detach()
        out._scale_inv = self._scale_inv
        return out

    def dequantize(self, *, dtype=None):
        return self.as_subclass(torch.Tensor) * self._scale_inv


def _rank_gathers(src: str) -> dict:
    from rlad_megatron.fp8 import dequantized
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import iter_hf_tensors
    from rlad_megatron.weight_sync.shm_gather import ShmTensorGather

    chunks, arch = load_hf_model(src, trainable=True, params_dtype=torch.float32)
    reference = {n: t.clone() for n, t in iter_hf_tensors(chunks, arch)}
    quantized = 0
    for chunk in chunks:
        for module in chunk.modules():
            weight = module._parameters.get("weight")
            if weight is not None and weight.dim() == 2 and "embedding" not in type(module).__name__.lower():
                module._parameters["weight"] = torch.nn.Parameter(FakeFloat8(weight.detach(), SCALE_INV))
                quantized += 1
    fake = next(p for c in chunks for p in c.parameters() if isinstance(p, FakeFloat8))
    assert not torch.equal(fake.as_subclass(torch.Tensor), dequantized(fake))  # bytes != values: the test can fail
    gathered = {n: t for n, t in iter_hf_tensors(chunks, arch)}
    dst_only = {n: t for n, t in iter_hf_tensors(chunks, arch, dst_only=True)}
    shm = ShmTensorGather(bucket_bytes=8 << 10)
    try:
        shared = {n: t.clone() for n, t in shm.iter_hf_tensors(chunks, arch)}
    finally:
        shm.close()
    return {"quantized": quantized, "reference": reference, "gathered": gathered, "dst_only": dst_only,
            "shm": shared}


def test_fp8_parameters_are_gathered_as_their_values(tmp_path):
    src = make_tiny_hf_model(tmp_path / "src", "qwen3", seed=5)
    results = run_distributed(_rank_gathers, 2, tp=2, args=(str(src),), timeout=300)
    for rank, r in enumerate(results):
        assert r["quantized"] > 0
        assert set(r["gathered"]) == set(r["reference"])
        for name, tensor in r["reference"].items():
            assert type(r["gathered"][name]) is torch.Tensor
            assert torch.equal(r["gathered"][name], tensor), f"rank {rank}: {name} gathered as FP8 bytes"
        if rank == 0:  # the gathers to TP rank 0
            for path in ("dst_only", "shm"):
                assert set(r[path]) == set(r["reference"])
                for name, tensor in r["reference"].items():
                    assert torch.equal(r[path][name], tensor), f"{path}: {name}"
        else:
            assert not r["dst_only"] and not r["shm"]


def test_dequantized_leaves_plain_tensors_alone():
    from rlad_megatron.fp8 import dequantized

    plain = torch.randn(3)
    assert dequantized(plain) is plain
    assert dequantized(torch.nn.Parameter(plain)) is not None
    fake = FakeFloat8(plain, SCALE_INV)
    assert type(dequantized(fake)) is torch.Tensor and torch.equal(dequantized(fake), plain)
