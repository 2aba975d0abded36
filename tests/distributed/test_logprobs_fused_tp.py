"""The fused output layer + log-probs at TP = 1 and 2 on gloo against a single-process full-vocabulary reference
computed here: log-probs, entropy, top-k, and the gradients w.r.t. the hidden states and the output weight, with and
without sequence parallelism, with a weight tied to a vocab-parallel input embedding (Megatron's, its gradient
accumulated into a ``main_grad`` buffer), a padded vocabulary, several targets per position and a temperature."""

from __future__ import annotations

import pytest
import torch

from rlad_megatron.logprobs import entropy_reference, token_logprobs_reference
from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

S, B, H, PADDED_V = 8, 2, 12, 48
CASES = [  # (name, sequence parallel, tied embedding, true vocab, targets per position, temperature, chunk rows)
    ("plain", False, False, PADDED_V, None, 1.0, 5),
    ("sp", True, False, PADDED_V, None, 1.0, 3),
    ("sp-tied-padded", True, True, 37, None, 1.0, 4),  # at TP=2 the second shard holds 13 real rows of 24
    ("tied-topk-targets-temperature", False, True, PADDED_V, 3, 0.8, None),
]


def _inputs(vocab: int, k: int | None, seed: int):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, B, H, generator=gen)
    weight = 0.5 * torch.randn(PADDED_V, H, generator=gen)
    tokens = torch.randint(0, vocab, (S, B), generator=gen)  # the input ids (for the tied embedding)
    shape = (S, B) if k is None else (S, B, k)
    targets = torch.randint(0, vocab, shape, generator=gen)
    g_lp = torch.randn(shape, generator=gen)
    g_h = torch.randn(S, B, generator=gen)
    return hidden, weight, tokens, targets, g_lp, g_h


def _rank_body() -> dict:
    """Per case: the fused path, and today's path (Megatron's output-layer linear with its SP gather / TP
    all-reduce, then the vocab-parallel kernel) on the same shards."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import mappings
    from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce

    from rlad_megatron.logprobs import fused_token_logprobs, fused_topk, vocab_parallel_token_logprobs

    group = ps.get_tensor_model_parallel_group()
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    out: dict = {}
    for i, (name, sp, tied, vocab, k, temperature, chunk) in enumerate(CASES):
        hidden, weight, tokens, targets, g_lp, g_h = _inputs(vocab, k, seed=i)
        for path in ("fused", "today"):
            w = weight.chunk(tp)[rank].clone().requires_grad_()
            h = (hidden.chunk(tp)[rank] if sp else hidden).clone().requires_grad_()
            x = h
            if tied:  # Megatron's VocabParallelEmbedding on the same weight shard, added to the hidden states
                w.main_grad = torch.zeros_like(w)
                local = tokens - rank * w.shape[0]
                outside = (local < 0) | (local >= w.shape[0])
                emb = torch.nn.functional.embedding(local.masked_fill(outside, 0), w) * (~outside).unsqueeze(-1)
                emb = (mappings.reduce_scatter_to_sequence_parallel_region(emb, group=group) if sp
                       else mappings.reduce_from_tensor_model_parallel_region(emb, group=group))
                x = h + emb
            if path == "fused":
                lp, ent = fused_token_logprobs(x, w, targets, tp_group=group, sequence_parallel=sp,
                                               vocab_size=vocab, temperature=temperature, return_entropy=True,
                                               chunk_size=chunk, accumulate_grad_into_main_grad=tied)
            else:
                logits = linear_with_grad_accumulation_and_async_allreduce(
                    x, w, None, gradient_accumulation_fusion=False, allreduce_dgrad=tp > 1 and not sp,
                    sequence_parallel=sp and tp > 1, tp_group=group) / temperature
                lp, ent = vocab_parallel_token_logprobs(logits, targets, tp_group=group, vocab_size=vocab,
                                                        return_entropy=True)
            ((lp * g_lp).sum() + (ent * g_h).sum()).backward()
            grad_w = w.grad if not tied else w.main_grad + (w.grad if w.grad is not None else 0)
            out[(name, path)] = {"lp": lp.detach(), "ent": ent.detach(), "grad_h": h.grad, "grad_w": grad_w}
        top_lp, top_ids = fused_topk(x.detach(), w.detach(), 5, tp_group=group, sequence_parallel=sp,
                                     vocab_size=vocab, temperature=temperature, chunk_size=chunk)
        out[(name, "fused")].update(top_lp=top_lp, top_ids=top_ids)
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_fused_equals_todays_output_layer_and_kernel(tp):
    """Relative 1e-5 in fp32 against Megatron's linear + the vocab-parallel kernel, rank by rank."""
    results = run_distributed(_rank_body, world_size=tp, tp=tp, timeout=180)
    for name, *_ in CASES:
        for rank, res in enumerate(results):
            fused, today = res[(name, "fused")], res[(name, "today")]
            for key in ("lp", "ent", "grad_h", "grad_w"):
                torch.testing.assert_close(fused[key], today[key], rtol=1e-5, atol=1e-6,
                                           msg=f"{name} rank {rank} {key}: fused vs today's path")


@pytest.mark.parametrize("tp", [1, 2])
def test_fused_matches_full_vocab_reference(tp):
    results = [{name: r for (name, path), r in res.items() if path == "fused"}
               for res in run_distributed(_rank_body, world_size=tp, tp=tp, timeout=180)]
    for i, (name, sp, tied, vocab, k, temperature, _) in enumerate(CASES):
        hidden, weight, tokens, targets, g_lp, g_h = _inputs(vocab, k, seed=i)
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        x = h + torch.nn.functional.embedding(tokens, w) if tied else h
        logits = (x @ w.t()) / temperature
        lp, ent = token_logprobs_reference(logits, targets, vocab), entropy_reference(logits, vocab)
        ((lp * g_lp).sum() + (ent * g_h).sum()).backward()
        ref_top_lp, ref_top_ids = torch.log_softmax(logits.detach()[..., :vocab], -1).topk(5, dim=-1)
        tol = dict(rtol=1e-5, atol=1e-5)
        for rank, res in enumerate(results):
            r = res[name]
            torch.testing.assert_close(r["lp"], lp.detach(), **tol, msg=f"{name} rank {rank} logprobs")
            torch.testing.assert_close(r["ent"], ent.detach(), **tol, msg=f"{name} rank {rank} entropy")
            torch.testing.assert_close(r["top_lp"], ref_top_lp, **tol, msg=f"{name} rank {rank} top-k")
            assert torch.equal(r["top_ids"], ref_top_ids), f"{name} rank {rank} top-k ids"
            want_h = h.grad.chunk(tp)[rank] if sp else h.grad
            torch.testing.assert_close(r["grad_h"], want_h, **tol, msg=f"{name} rank {rank} grad hidden")
        grad_w = torch.cat([res[name]["grad_w"] for res in results])
        torch.testing.assert_close(grad_w, w.grad, **tol, msg=f"{name} grad weight")
        if not tied:
            assert torch.all(grad_w[vocab:] == 0), f"{name}: padding rows got gradient"
