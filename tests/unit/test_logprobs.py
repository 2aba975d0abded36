"""Single-device vocab-parallel kernel (tp_group=None) vs the plain log_softmax reference: values and gradients."""

from __future__ import annotations

import pytest
import torch

from rlad_megatron.logprobs import (
    entropy_reference,
    token_logprobs_reference,
    vocab_parallel_token_logprobs,
    vocab_parallel_topk,
)


def _inputs(shape, vocab, dtype, seed=0, scale=4.0, valid=None):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(*shape, vocab, generator=gen)).to(dtype)
    targets = torch.randint(0, valid or vocab, shape, generator=gen)
    return logits, targets


def _both(logits, targets, *, vocab_size=None, chunk_size=None, entropy=True, seed=1):
    """Our kernel and the reference on the same inputs and upstream gradients; returns values and input grads."""
    gen = torch.Generator().manual_seed(seed)
    g_lp = torch.randn(targets.shape, generator=gen)
    g_h = torch.randn(logits.shape[:-1], generator=gen)
    x = logits.clone().requires_grad_()
    out = vocab_parallel_token_logprobs(x, targets, chunk_size=chunk_size, vocab_size=vocab_size,
                                        return_entropy=entropy)
    lp, h = out if entropy else (out, None)
    ((lp * g_lp).sum() + ((h * g_h).sum() if entropy else 0)).backward()
    xr = logits.clone().float().requires_grad_()  # reference in fp32 on the same (possibly bf16) values
    lr = token_logprobs_reference(xr, targets, vocab_size)
    hr = entropy_reference(xr, vocab_size)
    ((lr * g_lp).sum() + ((hr * g_h).sum() if entropy else 0)).backward()
    return lp, h, x.grad, lr, hr, xr.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
def test_values_entropy_and_grads_match_reference(dtype, chunk_size):
    logits, targets = _inputs((3, 7), 50, dtype)
    lp, h, g, lr, hr, gr = _both(logits, targets, chunk_size=chunk_size)
    assert lp.dtype == torch.float32 and lp.shape == targets.shape and h.shape == targets.shape
    assert g.dtype == dtype
    torch.testing.assert_close(lp, lr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, hr, rtol=1e-5, atol=1e-5)
    if dtype == torch.float32:
        torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-6)
    else:  # ours rounds an fp32 gradient to bf16 once: within one bf16 rounding of the fp32 reference
        torch.testing.assert_close(g.float(), gr, rtol=2 ** -8, atol=1e-6)


def test_logprobs_only_backward_matches_reference():
    logits, targets = _inputs((4, 5), 33, torch.float32, seed=3)
    lp, _, g, lr, _, gr = _both(logits, targets, entropy=False, chunk_size=2)
    torch.testing.assert_close(lp, lr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-6)


def test_padded_vocab_columns_get_no_mass_and_no_gradient():
    logits, targets = _inputs((2, 6), 40, torch.float32, seed=4, valid=33)
    logits[..., 33:] = 50.0  # would dominate the softmax if counted
    lp, h, g, lr, hr, gr = _both(logits, targets, vocab_size=33, chunk_size=5)
    torch.testing.assert_close(lp, lr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, hr, rtol=1e-5, atol=1e-5)
    assert torch.all(g[..., 33:] == 0)
    torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-6)


def test_several_targets_per_position():
    logits, _ = _inputs((2, 3), 20, torch.float32, seed=5)
    targets = torch.randint(0, 20, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    targets[0, 0] = torch.tensor([5, 5, 0, 5])  # repeated ids: their gradients add up
    lp, h, g, lr, hr, gr = _both(logits, targets, chunk_size=4)
    assert lp.shape == (2, 3, 4) and h.shape == (2, 3)
    torch.testing.assert_close(lp, lr, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-6)


def test_extreme_and_minus_inf_logits_stay_finite():
    logits, targets = _inputs((2, 4), 16, torch.float32, seed=6)
    logits = logits + 1e4  # overflow without the max shift
    logits[0, 0, 5:] = float("-inf")  # masked tokens
    targets[0, 0] = 2
    lp, h, g, lr, hr, gr = _both(logits, targets, chunk_size=3)
    assert torch.isfinite(lp).all() and torch.isfinite(h).all() and torch.isfinite(g).all()
    torch.testing.assert_close(lp, lr, rtol=1e-5, atol=1e-3)  # |logits| ~ 1e4 in fp32: absolute rounding ~1e-3
    torch.testing.assert_close(h, hr, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(g, gr, rtol=1e-3, atol=1e-3)


def test_gradcheck_float64():
    logits, targets = _inputs((2, 3), 7, torch.float64, seed=7, scale=1.0, valid=6)
    x = logits.clone().requires_grad_()

    def fn(inp):
        lp, h = vocab_parallel_token_logprobs(inp, targets, chunk_size=2, vocab_size=6, return_entropy=True)
        return lp.double(), h.double()

    # the kernel computes in fp32, so compare to finite differences at fp32 resolution
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-2, atol=2e-3, rtol=1e-2)


def test_non_contiguous_logits_and_megatron_layout():
    logits, targets = _inputs((3, 4), 12, torch.float32, seed=8)
    sbv = logits.transpose(0, 1).contiguous()  # Megatron's [S, B, V]
    ours = vocab_parallel_token_logprobs(sbv, targets.t()).t()
    torch.testing.assert_close(ours, token_logprobs_reference(logits, targets))
    transposed = vocab_parallel_token_logprobs(sbv.transpose(0, 1), targets)
    torch.testing.assert_close(transposed, token_logprobs_reference(logits, targets))


def test_errors_name_the_bad_input():
    logits, targets = _inputs((2, 3), 10, torch.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 8\)"):
        vocab_parallel_token_logprobs(logits, targets.clamp(max=9).index_fill(1, torch.tensor([0]), 9),
                                      vocab_size=8)
    with pytest.raises(ValueError, match="targets of shape"):
        vocab_parallel_token_logprobs(logits, targets[:, :2])
    with pytest.raises(ValueError, match="vocab_size must be an int in"):
        vocab_parallel_token_logprobs(logits, targets, vocab_size=11)
    with pytest.raises(ValueError, match="chunk_size"):
        vocab_parallel_token_logprobs(logits, targets, chunk_size=0)
    with pytest.raises(ValueError, match="integer token ids"):
        vocab_parallel_token_logprobs(logits, targets.float())
    with pytest.raises(ValueError, match="floating point"):
        vocab_parallel_token_logprobs(targets, targets)


@pytest.mark.parametrize("vocab_size", [None, 27])
def test_topk_matches_reference(vocab_size):
    logits, _ = _inputs((3, 5), 30, torch.float32, seed=9)
    values, ids = vocab_parallel_topk(logits, 6, vocab_size=vocab_size, chunk_size=4)
    ref_v, ref_i = torch.log_softmax(logits[..., :vocab_size or 30], dim=-1).topk(6, dim=-1)
    torch.testing.assert_close(values, ref_v)
    assert torch.equal(ids, ref_i)
    with pytest.raises(ValueError, match="k must be an int in"):
        vocab_parallel_topk(logits, 31)
