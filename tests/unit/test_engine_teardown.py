"""T1: shutting one vLLM engine down must not release the CuMem pools of a sleeping engine in the same process.
vLLM 0.32's own ``Worker.shutdown`` runs here on a stand-in worker with a stand-in allocator (the real one needs
CUDA), so the test fails when vLLM changes what its teardown does."""
from __future__ import annotations

import types

import pytest

pytest.importorskip("vllm")


class _Allocator:
    """Stands in for vLLM's CuMemAllocator singleton: counts pool releases."""

    def __init__(self):
        self.releases = 0

    def release_pools(self):
        self.releases += 1


@pytest.fixture
def vllm_teardown(monkeypatch):
    """``teardown()`` runs vLLM's ``Worker.shutdown`` as on a CUDA machine; returns the stand-in allocator that
    CuMemAllocator.instance holds."""
    from vllm.device_allocator import cumem
    from vllm.v1.worker import gpu_worker

    allocator = _Allocator()
    monkeypatch.setattr(cumem.CuMemAllocator, "instance", allocator)
    monkeypatch.setattr(gpu_worker, "current_platform", types.SimpleNamespace(is_cuda_alike=lambda: True))
    worker = types.SimpleNamespace(profiler=None, model_runner=None,
                                   elastic_ep_executor=types.SimpleNamespace(shutdown=lambda: None))

    def teardown(*_):
        gpu_worker.Worker.shutdown(worker)

    return teardown, allocator, cumem.CuMemAllocator


def test_vllm_teardown_releases_the_process_wide_pools(vllm_teardown):
    teardown, allocator, _ = vllm_teardown
    teardown()
    assert allocator.releases == 1, "vLLM's teardown no longer releases the CuMem pools: _cumem_pools_kept may go"


def test_pools_kept_while_another_engine_uses_them(vllm_teardown):
    from rlad_megatron.rollout.vllm_env import _cumem_pools_kept

    teardown, allocator, cls = vllm_teardown
    with _cumem_pools_kept(True, cls):
        teardown()
    assert allocator.releases == 0 and cls.instance is allocator
    with _cumem_pools_kept(False, cls):
        teardown()
    assert allocator.releases == 1


def _engine(sleep_mode: bool):
    from rlad_megatron.rollout import vllm_engine
    from rlad_megatron.config.engine import VLLMEngineConfig

    engine = vllm_engine.VLLMEngine.__new__(vllm_engine.VLLMEngine)
    engine.__dict__.update(config=VLLMEngineConfig(model="m", enable_sleep_mode=sleep_mode), sharded=False,
                           _closed=False, _llm=object(), _dist_state={})
    if sleep_mode:
        vllm_engine._SLEEP_MODE_ENGINES.add(engine)
    return engine


def test_scorer_shutdown_keeps_the_sleeping_engines_pools(vllm_teardown, monkeypatch):
    """The teacher scorer (no sleep mode) shuts down first: the rollout engine's pools stay; the rollout engine,
    the last CuMem user, releases them when it shuts down."""
    from rlad_megatron.rollout import vllm_engine

    teardown, allocator, _ = vllm_teardown
    monkeypatch.setattr(vllm_engine, "_shutdown_without_default_group", teardown)
    rollout, scorer = _engine(sleep_mode=True), _engine(sleep_mode=False)
    scorer.shutdown()
    assert allocator.releases == 0
    rollout.shutdown()
    assert allocator.releases == 1 and not vllm_engine._SLEEP_MODE_ENGINES
