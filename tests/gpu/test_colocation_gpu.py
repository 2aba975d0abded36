"""Colocation on one GPU (issue 21): the frozen teacher offloaded to host memory between passes, and (where vLLM is
installed) a sharded engine built inside the learner's NCCL world that keeps the rank on its GPU, sleeps to free
its memory during training and wakes for the sync and the next generation. Skipped without CUDA (conftest); the vLLM
parts also without vLLM (the lent H200 has none)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rlad_megatron.device import rank_device

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("coloc") / "llama", family="llama", num_layers=2,
                              hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, seed=0)


def _batch(vocab: int):
    from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (6,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(3, vocab, (10,), generator=g).tolist() for _ in range(4)]
    tokens, mask, engine = pack_sequences(prompts, responses, [[-1.0] * 10] * 4, pad_id=0)
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(4), rewards=torch.zeros(4),
                          correct=torch.zeros(4, dtype=torch.bool), engine_logprobs=engine)
    return SequenceBatch(**{f.name: None if getattr(batch, f.name) is None else getattr(batch, f.name).to(rank_device())
                            for f in dataclasses.fields(batch)})


def test_teacher_offload_frees_the_gpu_between_passes(nccl_world, tiny_hf):
    from rlad_megatron.teacher import MegatronTeacher

    resident = MegatronTeacher.load(tiny_hf, batching=2, params_dtype=torch.bfloat16)
    batch = _batch(resident.policy.vocab_size)
    expected = resident.token_logprobs(batch)
    before = torch.cuda.memory_allocated()
    offloaded = MegatronTeacher.load(tiny_hf, batching=2, params_dtype=torch.bfloat16, offload=True)
    params = list(offloaded.policy.chunks[0].parameters())
    assert all(p.device.type == "cpu" and p.is_pinned() for p in params)
    assert torch.cuda.memory_allocated() <= before + (1 << 20)  # its weights are not on the GPU between passes
    got = offloaded.token_logprobs(batch)
    assert all(p.device.type == "cpu" for p in offloaded.policy.chunks[0].parameters())
    mask = batch.loss_mask
    assert torch.equal(got[mask], expected[mask])  # the same weights, the same kernels


def test_sharded_engine_keeps_the_rank_device_and_sleeps(nccl_world, tiny_hf):
    pytest.importorskip("vllm")
    import torch.distributed as dist

    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(VLLMEngineConfig(model=str(tiny_hf), dtype="bfloat16", max_model_len=256,
                                         executor="external_launcher", tensor_parallel_size=1,
                                         gpu_memory_utilization=0.3, enable_sleep_mode=True))
    try:
        assert torch.cuda.current_device() == rank_device().index
        settings = SamplingSettings(n=2, max_tokens=16, seed=3)
        first = engine.generate([[1, 5, 7, 9]], settings)
        free_awake = torch.cuda.mem_get_info()[0]
        engine.sleep(1)
        assert torch.cuda.mem_get_info()[0] > free_awake + (64 << 20)  # weights and KV cache released
        with pytest.raises(RuntimeError, match="sleeping engine"):
            engine.generate([[1, 5]], settings)
        engine.wake_up("weights")
        engine.wake_up("kv_cache")
        again = engine.generate([[1, 5, 7, 9]], settings)
        assert [c.token_ids for c in again[0].completions] == [c.token_ids for c in first[0].completions]
        total = torch.ones(1, device=rank_device())
        dist.all_reduce(total)  # the learner's NCCL world still works next to vLLM's groups
        assert total.item() == 1.0
    finally:
        engine.shutdown()
    assert torch.cuda.current_device() == rank_device().index


def test_vllm_sizes_the_kv_cache_on_a_gpu(nccl_world, tiny_hf):
    """S1/S3: on a GPU the engine passes no kv_cache_memory_bytes (a 16 MiB setting does not cap the cache), and the
    share computed for a wanted KV cache with our runtime estimate gives vLLM at least that cache."""
    pytest.importorskip("vllm")
    from rlad_megatron.placement import ModelShape
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine
    from rlad_megatron.rollout.vllm_memory import (
        EngineFootprint, estimated_runtime_bytes, kv_bytes_per_token, utilization_for_kv_cache,
    )

    shape = ModelShape.from_hf_dir(str(tiny_hf))
    per_token = kv_bytes_per_token(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                                   head_dim=shape.head_dim_or_default, dtype_bytes=2)
    free, total = torch.cuda.mem_get_info()
    wanted = 1 << 30
    runtime = estimated_runtime_bytes(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                                      vocab_size=shape.vocab_size)
    share = utilization_for_kv_cache(total, wanted, EngineFootprint(weights=64 << 20, activation_peak=runtime))
    assert share * total < free
    engine = VLLMEngine(VLLMEngineConfig(model=str(tiny_hf), dtype="bfloat16", max_model_len=256,
                                         executor="external_launcher", kv_cache_bytes=16 << 20,
                                         gpu_memory_utilization=share))
    try:
        got = engine.kv_cache_tokens * per_token
        print(f"\nKV cache: wanted {wanted >> 20} MiB at share {share}, vLLM gave {got >> 20} MiB")
        assert got > 16 << 20
        assert got >= 0.95 * wanted, "the runtime estimate is below what vLLM's profiling measured"
    finally:
        engine.shutdown()


def test_scorer_shutdown_leaves_the_sleeping_engine_working(nccl_world, tiny_hf):
    """T1: a second engine without sleep mode (the vLLM teacher scorer) shuts down while the rollout engine sleeps;
    the rollout engine still wakes and generates the same tokens."""
    pytest.importorskip("vllm")
    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine, VLLMTeacherScorer

    rollout = VLLMEngine(VLLMEngineConfig(model=str(tiny_hf), dtype="bfloat16", max_model_len=256,
                                          executor="external_launcher", gpu_memory_utilization=0.2,
                                          enable_sleep_mode=True))
    try:
        settings = SamplingSettings(n=2, max_tokens=16, seed=3)
        first = rollout.generate([[1, 5, 7, 9]], settings)
        scorer = VLLMTeacherScorer(VLLMEngineConfig(model=str(tiny_hf), dtype="bfloat16", max_model_len=256,
                                                    executor="external_launcher", gpu_memory_utilization=0.2))
        rollout.sleep(1)
        scorer.shutdown()
        rollout.wake_up("weights")
        rollout.wake_up("kv_cache")
        again = rollout.generate([[1, 5, 7, 9]], settings)
        assert [c.token_ids for c in again[0].completions] == [c.token_ids for c in first[0].completions]
    finally:
        rollout.shutdown()
