"""A frozen policy's top-k pass (``MegatronPolicy.token_topk``, the teacher's top-k) through Megatron's schedule, with
the fused head and with the logits + ``vocab_parallel_topk``, token-budget and packed micro-batches, at TP=2 + SP
and PP=2: both give the same top-k, sorted, consistent with the same policy's token log-probs (which the same pass
also returns, ``with_logprobs``)."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

K = 5


def _score(sequence_parallel: bool) -> dict | None:
    from megatron.core import parallel_state as ps

    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy
    from rlad_megatron.models.teacher import freeze
    from rlad_megatron.testing.tiny_gpt import VOCAB, random_sequence_batch, tiny_config, tiny_gpt

    batch = random_sequence_batch(8, seed=11)
    chunks = freeze([tiny_gpt(tiny_config(num_layers=2, sequence_parallel=sequence_parallel))])
    out: dict = {}
    for fused in (True, False):
        policy = MegatronPolicy(chunks, VOCAB, fused_logprobs=fused)
        for name, batching in (("budget", MicroBatching(max_tokens=24)),
                               ("packed", MicroBatching(max_tokens=24, packing=True))):
            topk = policy.token_topk(batch, batching, K)
            logprobs = policy.token_logprobs(batch, batching)
            both = policy.token_topk(batch, batching, K, with_logprobs=True)  # one pass for the two
            if topk is not None:
                out[(fused, name)] = (*topk, logprobs, both)
    if not ps.is_pipeline_last_stage() or ps.get_tensor_model_parallel_rank() != 0:
        return None
    return {"results": out, "tokens": batch.tokens, "lengths": batch.lengths}


@pytest.mark.parametrize("layout", ["tp2_sp", "pp2"])
def test_topk_pass_fused_and_logits_agree(layout):
    tp, pp = (2, 1) if layout == "tp2_sp" else (1, 2)
    (got,) = [r for r in run_distributed(_score, 2, tp=tp, pp=pp, args=(layout == "tp2_sp",), timeout=300) if r]
    results, tokens, lengths = got["results"], got["tokens"], got["lengths"]
    valid = torch.arange(tokens.shape[1] - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    reference_lp, reference_ids, _, _ = results[(False, "budget")]
    for key, (lp, ids, logprobs, both) in results.items():
        assert torch.equal(both[0], lp) and torch.equal(both[1], ids), f"{key}: one-pass top-k"
        torch.testing.assert_close(both[2][valid], logprobs[valid], rtol=1e-6, atol=1e-6, msg=f"{key}: one pass")
        assert lp.shape == ids.shape == (*tokens[:, 1:].shape, K) and ids.dtype == torch.long, key
        torch.testing.assert_close(lp[valid], reference_lp[valid], rtol=1e-5, atol=1e-5, msg=f"{key} top-k")
        assert torch.equal(ids[valid], reference_ids[valid]), f"{key} top-k ids"
        assert torch.all(lp[valid][:, :-1] >= lp[valid][:, 1:]), f"{key}: not sorted"
        # the same distribution as the token log-probs: a target among the top-k has its log-prob there
        hit = (ids == tokens[:, 1:, None]) & valid[..., None]
        assert hit.any()
        torch.testing.assert_close(lp[hit], logprobs[:, :, None].expand_as(lp)[hit], rtol=1e-5, atol=1e-5)
        assert torch.all(lp[valid][:, 0] >= logprobs[valid] - 1e-5)
        assert torch.all(lp[~valid] == 0) and torch.all(ids[~valid] == 0), f"{key}: padding not zero"
