"""Vocab-parallel token log-probs, entropy and top-k at TP = 1, 2, 4 on gloo, against the full-vocabulary
reference computed in this process: values and gradients, fp32 and bf16, padded vocabulary, ragged masks; plus
Megatron's own ``vocab_parallel_cross_entropy`` on the same shards as a second, independent check."""

from __future__ import annotations

import pytest
import torch

from rlad_megatron.logprobs import entropy_reference, token_logprobs_reference
from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

B, T, PADDED_V = 3, 5, 48
CASES = [  # (name, dtype, true vocab, chunk rows)
    ("fp32", torch.float32, PADDED_V, 4),
    ("bf16", torch.bfloat16, PADDED_V, None),
    ("fp32-padded", torch.float32, 37, 3),  # at TP=4 the last shard (36..47) holds 1 real column
    ("bf16-padded", torch.bfloat16, 29, 5),  # at TP=4 the last shard is all padding
]


def _case_inputs(dtype: torch.dtype, vocab: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(B, T, PADDED_V, generator=gen)).to(dtype)
    targets = torch.randint(0, vocab, (B, T), generator=gen)
    lengths = torch.tensor([T, 2, 4])  # ragged responses
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    g_lp = torch.randn(B, T, generator=gen)
    g_h = torch.randn(B, T, generator=gen)
    return logits, targets, mask, g_lp, g_h


def _rank_body() -> dict:
    """On each rank: shard the full logits by vocabulary, run the kernel, return values and this shard's grad."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from rlad_megatron.logprobs import vocab_parallel_token_logprobs, vocab_parallel_topk

    group = ps.get_tensor_model_parallel_group()
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    out: dict = {}
    for i, (name, dtype, vocab, chunk) in enumerate(CASES):
        logits, targets, mask, g_lp, g_h = _case_inputs(dtype, vocab, seed=i)
        shard = logits.chunk(tp, dim=-1)[rank].clone().requires_grad_()
        lp, h = vocab_parallel_token_logprobs(shard, targets, tp_group=group, chunk_size=chunk, vocab_size=vocab,
                                              return_entropy=True)
        # a masked downstream loss: positions beyond each response's length must get no gradient
        loss = torch.where(mask, lp * g_lp + h * g_h, torch.zeros(())).sum()
        loss.backward()
        top_lp, top_ids = vocab_parallel_topk(shard.detach().float(), 5, tp_group=group, vocab_size=vocab)
        out[name] = {"lp": lp.detach(), "h": h.detach(), "grad": shard.grad, "top_lp": top_lp, "top_ids": top_ids}
        if vocab == PADDED_V:  # Megatron's kernel knows no padding: compare on the unpadded cases only
            megatron_loss = tensor_parallel.vocab_parallel_cross_entropy(
                shard.detach().float().transpose(0, 1).contiguous(), targets.t().contiguous()
            ).t()
            out[name]["megatron_nll"] = megatron_loss
    return out


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_parallel_matches_full_vocab_reference(tp):
    results = run_distributed(_rank_body, world_size=tp, tp=tp, timeout=180)
    for i, (name, dtype, vocab, _) in enumerate(CASES):
        logits, targets, mask, g_lp, g_h = _case_inputs(dtype, vocab, seed=i)
        x = logits.float().requires_grad_()
        lr = token_logprobs_reference(x, targets, vocab)
        hr = entropy_reference(x, vocab)
        torch.where(mask, lr * g_lp + hr * g_h, torch.zeros(())).sum().backward()
        ref_top_lp, ref_top_ids = torch.log_softmax(logits.float()[..., :vocab], -1).topk(5, dim=-1)
        grads = []
        for rank, res in enumerate(results):
            r = res[name]
            torch.testing.assert_close(r["lp"], lr, rtol=1e-5, atol=1e-5, msg=f"{name} rank {rank} logprobs")
            torch.testing.assert_close(r["h"], hr, rtol=1e-5, atol=1e-5, msg=f"{name} rank {rank} entropy")
            assert r["grad"].dtype == dtype
            torch.testing.assert_close(r["top_lp"], ref_top_lp, rtol=1e-5, atol=1e-5)
            if dtype == torch.float32:  # bf16 logits may hold exact ties, whose order is unspecified
                assert torch.equal(r["top_ids"], ref_top_ids), f"{name} rank {rank} top-k ids"
            if "megatron_nll" in r:
                torch.testing.assert_close(-r["megatron_nll"], lr, rtol=1e-5, atol=1e-5)
            grads.append(r["grad"].float())
        full_grad = torch.cat(grads, dim=-1)
        assert torch.all(full_grad[~mask] == 0), f"{name}: masked positions got gradient"
        assert torch.all(full_grad[..., vocab:] == 0), f"{name}: padding columns got gradient"
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2 ** -8, atol=1e-6)
        torch.testing.assert_close(full_grad, x.grad, **tol, msg=f"{name} gradient")
