"""vLLM's GPU memory arithmetic (``rlad_megatron.rollout.vllm_memory``) against vLLM 0.32's own code: its worker's
``determine_available_memory`` and ``request_memory`` run here on scripted memory readings (a fake worker, the real
functions), so a change of vLLM's formula fails this test."""
from __future__ import annotations

import contextlib
import types

import pytest

from rlad_megatron.rollout.vllm_memory import (
    GIB, EngineFootprint, estimated_runtime_bytes, kv_cache_bytes, kv_cache_memory_bytes_argument, requested_bytes,
    starts, utilization_for_kv_cache,
)

TOTAL = int(79.6 * GIB)  # an H100 as torch reports it


def _vllm_kv_cache(monkeypatch, *, free_at_start: int, utilization: float, footprint: EngineFootprint) -> int:
    """The KV cache bytes vLLM's GPU worker decides, from memory readings that show ``footprint`` (weights and
    non-torch memory held after loading, the activation peak of the profile run, the CUDA-graph estimate)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from vllm.config import CUDAGraphMode
    from vllm.utils import mem_utils
    from vllm.v1.worker import gpu_worker
    from vllm.v1.worker.utils import request_memory

    def snapshot(free: int, peak: int = 0, allocated: int = 0):
        s = mem_utils.MemorySnapshot(device="cpu", auto_measure=False)
        s.free_memory, s.total_memory, s.torch_peak, s.torch_allocated = free, TOTAL, peak, allocated
        s.cuda_memory, s.torch_memory, s.non_torch_memory = TOTAL - free, allocated, TOTAL - free - allocated
        return s

    loaded = free_at_start - footprint.weights - footprint.non_torch
    readings = [  # memory_profiling measures before and after the profile run
        dict(free=loaded, allocated=footprint.weights),
        dict(free=loaded, peak=footprint.weights + footprint.activation_peak, allocated=footprint.weights),
    ]

    def measure(self):
        reading = snapshot(**readings.pop(0))
        for field in ("free_memory", "total_memory", "torch_peak", "torch_allocated", "cuda_memory", "torch_memory",
                      "non_torch_memory"):
            setattr(self, field, getattr(reading, field))

    monkeypatch.setattr(mem_utils.MemorySnapshot, "measure", measure)
    monkeypatch.setattr(torch.accelerator, "empty_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.accelerator, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(gpu_worker, "set_current_vllm_config", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(gpu_worker, "current_platform", types.SimpleNamespace(
        is_cuda_alike=lambda: True, is_xpu=lambda: False, is_rocm=lambda: False))
    cache_config = types.SimpleNamespace(kv_cache_memory_bytes=None, gpu_memory_utilization=utilization)
    init = snapshot(free_at_start)
    worker = types.SimpleNamespace(
        cache_config=cache_config, init_snapshot=init, requested_memory=request_memory(init, cache_config),
        model_runner=types.SimpleNamespace(model_memory_usage=footprint.weights,
                                           profile_run=lambda randomize_inputs=False: None,
                                           profile_cudagraph_memory=lambda: footprint.cudagraphs),
        randomize_dummy_inputs=False, _scoped_allocator_max_split=lambda **k: contextlib.nullcontext(),
        vllm_config=types.SimpleNamespace(compilation_config=types.SimpleNamespace(
            cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE if footprint.cudagraphs else CUDAGraphMode.NONE)),
        model_config=types.SimpleNamespace(multimodal_config=None), parallel_config=types.SimpleNamespace(),
    )
    return gpu_worker.Worker.determine_available_memory(worker)


FOOTPRINT = EngineFootprint(weights=int(1.2 * GIB), activation_peak=int(1.4 * GIB), non_torch=int(0.4 * GIB),
                            cudagraphs=int(0.5 * GIB))


@pytest.mark.parametrize("utilization", [0.1, 0.35, 0.92])
def test_kv_cache_bytes_is_vllms(monkeypatch, utilization):
    ours = kv_cache_bytes(TOTAL, utilization, FOOTPRINT)
    assert _vllm_kv_cache(monkeypatch, free_at_start=TOTAL - GIB, utilization=utilization,
                          footprint=FOOTPRINT) == ours
    assert ours == requested_bytes(TOTAL, utilization) - FOOTPRINT.total


def test_share_for_a_wanted_kv_cache_gives_it_in_vllm(monkeypatch):
    """The colocated share computed for a 4 GiB KV cache gives vLLM at least 4 GiB (and less than 4 GiB + one
    rounding step); the old arithmetic, weights + KV cache only, gives vLLM less than the wanted cache."""
    wanted = 4 * GIB
    share = utilization_for_kv_cache(TOTAL, wanted, FOOTPRINT)
    got = _vllm_kv_cache(monkeypatch, free_at_start=TOTAL // 2, utilization=share, footprint=FOOTPRINT)
    assert wanted <= got < wanted + TOTAL * 1e-4 + 1
    naive_share = (FOOTPRINT.weights + wanted) / TOTAL
    assert kv_cache_bytes(TOTAL, naive_share, FOOTPRINT) < wanted - GIB


def test_start_check_is_vllms():
    pytest.importorskip("vllm")
    from vllm.utils.mem_utils import MemorySnapshot
    from vllm.v1.worker.utils import request_memory

    for free in (int(0.3 * TOTAL) - 1, int(0.3 * TOTAL) + 1):
        snap = MemorySnapshot(device="cpu", auto_measure=False)
        snap.free_memory, snap.total_memory = free, TOTAL
        try:
            request_memory(snap, types.SimpleNamespace(gpu_memory_utilization=0.3))
            vllm_starts = True
        except ValueError:
            vllm_starts = False
        assert starts(free, TOTAL, 0.3) == vllm_starts


def test_kv_cache_size_is_given_to_vllm_on_cpu_only():
    """S1: on a GPU an explicit kv_cache_memory_bytes would override vLLM's sizing (a disaggregated engine alone on
    its GPU got rollout.kv_cache_mb, 256 MiB by default, instead of 0.92 of the GPU)."""
    assert kv_cache_memory_bytes_argument(256 << 20, cuda=False) == 256 << 20
    assert kv_cache_memory_bytes_argument(256 << 20, cuda=True) is None


def test_runtime_estimate_grows_with_the_profile_run():
    small = estimated_runtime_bytes(hidden_size=1024, intermediate_size=3072, vocab_size=151936)
    large = estimated_runtime_bytes(hidden_size=4096, intermediate_size=12288, vocab_size=151936)
    assert 2 * GIB <= small < large
    assert estimated_runtime_bytes(hidden_size=4096, intermediate_size=12288, vocab_size=151936,
                                   tensor_parallel=4) < large
