"""vLLM's own reload path (``weight_load="vllm_reload"``, pre-packed oneDNN GEMMs): the reference the in-place path
is measured against, and the canary for the in-place switch (if vLLM stops pre-packing its CPU linear weights, the
switch in ``vllm_engine._plain_cpu_gemm`` is no longer needed and this test says so)."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.e2e


def test_vllm_reload_sync_matches_updated_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine
    from rlad_megatron.weight_sync import SyncVerifier, WeightSynchronizer, make_probe_batch
    from rlad_megatron.weight_sync.inprocess import InProcessTransport

    hf_dir = make_tiny_hf_model(tmp_path / "llama", family="llama", hidden_size=128, intermediate_size=256,
                                num_heads=4, num_kv_heads=2, seed=12)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    engine = VLLMEngine(VLLMEngineConfig(model=str(hf_dir), max_model_len=64, kv_cache_bytes=16 << 20,
                                         weight_load="vllm_reload"))
    try:
        report = engine._rpc("rlad_linear_weight_report")
        assert report["packed"] > 0 and report["plain"] == 0, (
            f"vLLM no longer pre-packs CPU linear weights ({report}): weight_load='inplace' needs no switch now")

        def learner(seqs, plens):
            out = []
            for s, p in zip(seqs, plens):
                with torch.no_grad():
                    lps = model(torch.tensor([s])).logits[0].double().log_softmax(-1)
                out.append([lps[t - 1, s[t]].item() for t in range(p, len(s))])
            return out

        verifier = SyncVerifier(engine, learner, make_probe_batch(100, num_sequences=2, length=16))
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.2)
        assert verifier.measure()["max_abs"] > 1e-2
        sync = WeightSynchronizer(InProcessTransport(engine), bucket_bytes=1 << 16, verifier=verifier)
        metrics = sync.sync_stream(list(model.state_dict().items()), version=1)
        assert metrics["sync/logprob_max_abs"] <= 1e-4 and engine.weight_version == 1
    finally:
        engine.shutdown()
