"""The fused output layer + log-probs (one device) against today's path (the output layer's matmul, then the
vocab-parallel kernel) and the plain full-vocabulary reference: values, entropy, top-k, and the gradients w.r.t.
the hidden states and the weight (returned, or accumulated into a Megatron-style ``main_grad``, tied or not)."""

from __future__ import annotations

import pytest
import torch

from rlad_megatron.logprobs import (
    entropy_reference,
    fused_token_logprobs,
    fused_topk,
    token_logprobs_reference,
    vocab_parallel_token_logprobs,
)
from rlad_megatron.logprobs.fused import DEFAULT_FUSED_CHUNK_ELEMENTS, fused_chunk_rows

S, B, H, V = 7, 3, 16, 40


def _inputs(dtype=torch.float32, vocab=V, k=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(S, B, H, generator=gen).to(dtype)
    weight = (0.5 * torch.randn(V, H, generator=gen)).to(dtype)
    shape = (S, B) if k is None else (S, B, k)
    targets = torch.randint(0, vocab, shape, generator=gen)
    g_lp = torch.randn(shape, generator=gen)
    g_h = torch.randn(S, B, generator=gen)
    return hidden, weight, targets, g_lp, g_h


def _today(hidden, weight, targets, g_lp, g_h, vocab=None, temperature=1.0):
    """Today's path in float32: logits = hidden @ W^T (/ T), the vocab-parallel kernel, backward."""
    h = hidden.float().clone().requires_grad_()
    w = weight.float().clone().requires_grad_()
    logits = (h @ w.t()) / temperature
    lp, ent = vocab_parallel_token_logprobs(logits, targets, vocab_size=vocab, return_entropy=True)
    ((lp * g_lp).sum() + (ent * g_h).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _fused(hidden, weight, targets, g_lp, g_h, **kw):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    lp, ent = fused_token_logprobs(h, w, targets, return_entropy=True, **kw)
    ((lp * g_lp).sum() + (ent * g_h).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _close(a, b, what, rtol=1e-5, atol=None):
    """Relative 1e-5 elementwise, with the absolute floor 1e-5 of the tensor's scale (sums of many chunks round
    differently than one matmul near zero)."""
    atol = 1e-5 * float(b.abs().max()) if atol is None else atol
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("chunk,vocab_chunk", [(None, None), (1, None), (4, None), (100, None), (4, 7), (1, 16)])
@pytest.mark.parametrize("vocab", [V, 33])
def test_values_and_gradients_equal_todays_path(chunk, vocab_chunk, vocab):
    """Chunks of 1-100 rows in the forward; backward tiles of all rows x all columns, single rows, several column
    blocks, and several blocks of a few rows each."""
    hidden, weight, targets, g_lp, g_h = _inputs(vocab=vocab)
    ref = _today(hidden, weight, targets, g_lp, g_h, vocab)
    got = _fused(hidden, weight, targets, g_lp, g_h, vocab_size=vocab, chunk_size=chunk, vocab_chunk_size=vocab_chunk)
    for a, b, what in zip(got, ref, ("logprobs", "entropy", "grad hidden", "grad weight")):
        _close(a, b, what)
    assert torch.all(got[3][vocab:] == 0), "padding rows of the weight got gradient"
    # and the plain full-vocabulary reference on the same logits
    logits = (hidden @ weight.t())
    _close(got[0], token_logprobs_reference(logits, targets, vocab), "logprobs vs reference")
    _close(got[1], entropy_reference(logits, vocab), "entropy vs reference")


def test_several_targets_per_position_and_temperature():
    hidden, weight, targets, g_lp, g_h = _inputs(k=4)
    targets[..., 1] = targets[..., 0]  # duplicate ids: their gradients add up
    ref = _today(hidden, weight, targets, g_lp, g_h, temperature=0.7)
    got = _fused(hidden, weight, targets, g_lp, g_h, temperature=0.7, chunk_size=5)
    for a, b, what in zip(got, ref, ("logprobs", "entropy", "grad hidden", "grad weight")):
        _close(a, b, what)


def test_logprobs_only_and_no_entropy_gradient():
    hidden, weight, targets, g_lp, _ = _inputs()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (fused_token_logprobs(h, w, targets, chunk_size=3) * g_lp).sum().backward()
    hr, wr = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    (token_logprobs_reference(hr @ wr.t(), targets) * g_lp).sum().backward()
    _close(h.grad, hr.grad, "grad hidden")
    _close(w.grad, wr.grad, "grad weight")


def test_main_grad_accumulation_with_a_tied_embedding():
    """Tied weights (the embedding is the output layer): the embedding lookup's gradient comes through autograd,
    the output layer's is added into ``main_grad``; their sum equals the plain path's gradient."""
    hidden, weight, targets, g_lp, g_h = _inputs()
    tokens = torch.randint(0, V, (S, B), generator=torch.Generator().manual_seed(5))

    def run(fused: bool):
        w = weight.clone().requires_grad_()
        w.main_grad = torch.full_like(w, 0.25)  # a buffer that already holds an earlier micro-batch's gradient
        x = torch.nn.functional.embedding(tokens, w) + hidden  # uses the weight as the input embedding
        if fused:
            lp, ent = fused_token_logprobs(x, w, targets, return_entropy=True, chunk_size=4, vocab_chunk_size=16,
                                           accumulate_grad_into_main_grad=True)
        else:
            lp, ent = vocab_parallel_token_logprobs(x @ w.t(), targets, return_entropy=True)
        ((lp * g_lp).sum() + (ent * g_h).sum()).backward()
        return w.main_grad + w.grad  # what Megatron DDP's hook leaves in the buffer

    _close(run(True), run(False), "tied weight: main_grad + grad")


@pytest.mark.parametrize("chunk,vocab_chunk", [(4, None), (1, 16), (100, 8)])
def test_bf16_close_to_fp32(chunk, vocab_chunk):
    hidden, weight, targets, g_lp, g_h = _inputs(torch.bfloat16)
    ref = _today(hidden, weight, targets, g_lp, g_h)
    got = _fused(hidden, weight, targets, g_lp, g_h, chunk_size=chunk, vocab_chunk_size=vocab_chunk)
    assert got[2].dtype == torch.bfloat16 and got[3].dtype == torch.bfloat16
    for a, b, what in zip(got, ref, ("logprobs", "entropy", "grad hidden", "grad weight")):
        _close(a.float(), b, what, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("vocab", [V, 33])
def test_topk_matches_the_full_distribution(vocab):
    hidden, weight, _, _, _ = _inputs()
    lp, ids = fused_topk(hidden, weight, 6, vocab_size=vocab, chunk_size=4, temperature=1.3)
    ref_lp, ref_ids = torch.log_softmax((hidden @ weight.t())[..., :vocab] / 1.3, dim=-1).topk(6, dim=-1)
    _close(lp, ref_lp, "top-k log-probs")
    assert torch.equal(ids, ref_ids)
    with pytest.raises(ValueError, match="k must be"):
        fused_topk(hidden, weight, vocab + 1, vocab_size=vocab)


def test_bad_inputs_are_named():
    hidden, weight, targets, _, _ = _inputs()
    with pytest.raises(ValueError, match="targets hold ids outside"):
        fused_token_logprobs(hidden, weight, targets + V)
    with pytest.raises(ValueError, match=r"targets of shape"):
        fused_token_logprobs(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match=r"\[V/TP, H\]"):
        fused_token_logprobs(hidden, weight[:, :-1], targets)
    with pytest.raises(ValueError, match="temperature"):
        fused_token_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_chunk_rows(0, V, 10)
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        fused_token_logprobs(hidden, weight, targets, vocab_chunk_size=0)
    assert fused_chunk_rows(None, 151936, 10**6) == DEFAULT_FUSED_CHUNK_ELEMENTS["cpu"] // 151936
