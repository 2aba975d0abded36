"""Sequence packing in THD format (Transformer Engine attention, ``PackedSeqParams`` with ``cu_seqlens``) gives the
unpacked padded path's token log-probs, and so does the token-budget layout. Skipped without CUDA (conftest)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model_parallel():
    from rlad_megatron import parallel

    parallel.initialize_model_parallel(1, 1, seed=0)
    yield
    parallel.destroy_model_parallel()


def test_thd_packing_matches_padded_logprobs(tmp_path, model_parallel):
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy
    from rlad_megatron.learner.sequences import SequenceBatch
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.builder import use_transformer_engine
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    assert use_transformer_engine(), "the TE layer spec must be in use for THD packing"
    hf = make_tiny_hf_model(tmp_path / "llama", family="llama", num_layers=2, hidden_size=256,
                            intermediate_size=512, num_heads=4, num_kv_heads=2, seed=0)
    chunks, arch = load_hf_model(hf, trainable=False, params_dtype=torch.bfloat16)
    chunks = [c.cuda() for c in chunks]
    policy = MegatronPolicy(chunks, arch.vocab_size)
    assert policy._uses_thd
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 120, (12,), generator=g)
    width = int(lengths.max())
    tokens = torch.randint(0, arch.vocab_size, (12, width), generator=g)
    mask = torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n:] = 0
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(12), rewards=torch.zeros(12),
                          correct=torch.zeros(12, dtype=torch.bool), engine_logprobs=torch.zeros(12, width - 1),
                          lengths=lengths)
    padded = policy.token_logprobs(batch, 4)
    budget = policy.token_logprobs(batch, MicroBatching(max_tokens=512))
    packed = policy.token_logprobs(batch, MicroBatching(max_tokens=512, packing=True))
    torch.testing.assert_close(budget[mask].float(), padded[mask].float(), rtol=0, atol=3e-2)
    torch.testing.assert_close(packed[mask].float(), padded[mask].float(), rtol=0, atol=3e-2)
