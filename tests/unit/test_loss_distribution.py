"""Top-k KL with a tail bucket (loss/distribution.py) and the student's log-probs at the teacher's ids
(logprobs/at_ids.py), against a plain full-vocabulary reference: values and gradients w.r.t. the student's logits."""

from __future__ import annotations

import math

import pytest
import torch

from rlad_megatron.logprobs import (
    token_logprobs_reference,
    vocab_parallel_logprobs_at,
    vocab_parallel_logsumexp,
    vocab_parallel_topk,
)
from rlad_megatron.loss.distribution import TAIL_FLOOR, masked_topk_kl, topk_kl, topk_mass, with_tail

B, T, V, K = 3, 4, 50, 6


def _logits(seed: int, scale: float = 3.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, T, V, generator=gen, dtype=torch.float64)).to(dtype)


def reference_topk_kl(student_logits, teacher_logits, k, direction):
    """The plain way: full softmax over the vocabulary on both sides, the teacher's top-k chosen explicitly, the tail
    bucket as the sum of the probabilities of every token NOT chosen, then the KL over the k + 1 buckets."""
    p_t = torch.softmax(teacher_logits, dim=-1)
    p_s = torch.softmax(student_logits, dim=-1)
    ids = torch.topk(p_t, k, dim=-1).indices
    chosen = torch.zeros_like(p_t, dtype=torch.bool).scatter(-1, ids, True)
    zero = torch.zeros((), dtype=p_t.dtype)
    bt = torch.cat([p_t.gather(-1, ids), torch.where(chosen, zero, p_t).sum(-1, keepdim=True)], dim=-1)
    bs = torch.cat([p_s.gather(-1, ids), torch.where(chosen, zero, p_s).sum(-1, keepdim=True)], dim=-1)
    if direction == "forward":
        return (bt * (bt.log() - bs.log())).sum(-1), ids
    return (bs * (bs.log() - bt.log())).sum(-1), ids


def _reference_and_grad(k, direction):
    student = _logits(0).requires_grad_()
    want, ids = reference_topk_kl(student, _logits(1), k, direction)
    g = torch.randn(B, T, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (want * g).sum().backward()
    return want.detach(), ids, g, student.grad


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("k", [1, K, V - 5])
def test_topk_kl_matches_full_vocabulary_reference_in_float64(direction, k):
    """The loss alone, fed exact (float64) log-probs: it is the reference's maths to rounding."""
    want, ids, g, want_grad = _reference_and_grad(k, direction)
    student = _logits(0).requires_grad_()
    s_lp = torch.log_softmax(student, -1).gather(-1, ids)
    t_lp = torch.log_softmax(_logits(1), -1).gather(-1, ids)
    got = topk_kl(s_lp, t_lp, direction)
    (got * g).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(student.grad, want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("k", [1, K, V // 2])
def test_topk_pipeline_matches_full_vocabulary_reference(direction, k):
    """As the trainer will run it: the teacher's top-k from ``vocab_parallel_topk`` (float32), the student's
    log-probs at those ids from its logits and log-sum-exp, then the loss; float32 accuracy."""
    want, ids, g, want_grad = _reference_and_grad(k, direction)
    student = _logits(0).requires_grad_()
    t_lp, t_ids = vocab_parallel_topk(_logits(1), k)
    assert torch.equal(t_ids, ids)
    s_lp = vocab_parallel_logprobs_at(student, t_ids.to(torch.int32), vocab_parallel_logsumexp(student))
    got = topk_kl(s_lp, t_lp, direction)
    (got * g).sum().backward()
    # float32 log-probs leave the tail mass 1 - sum_k p with an absolute error of ~1e-7, which a small teacher tail
    # (k = V/2) turns into a relative error of ~1e-4 in the reverse KL's log-ratio of the tails
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(student.grad, want_grad, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_whole_vocabulary_topk_is_the_full_kl(direction):
    student = _logits(3, dtype=torch.float64).requires_grad_()
    teacher = _logits(4, dtype=torch.float64)
    ls, lt = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    full = (lt.exp() * (lt - ls)).sum(-1) if direction == "forward" else (ls.exp() * (ls - lt)).sum(-1)
    ids = torch.arange(V).expand(B, T, V)
    got = topk_kl(ls.gather(-1, ids), lt.gather(-1, ids), direction)
    # the tail is empty (floored at TAIL_FLOOR on both sides: equal, so it adds nothing)
    torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-10)


def test_kl_is_zero_for_equal_distributions_and_positive_otherwise():
    lt = torch.log_softmax(_logits(5), -1)
    top = lt.topk(K, dim=-1).values
    for direction in ("forward", "reverse"):
        assert torch.allclose(topk_kl(top, top, direction), torch.zeros(B, T, dtype=top.dtype), atol=1e-12)
        other = torch.log_softmax(_logits(6), -1).gather(-1, lt.topk(K, dim=-1).indices)
        assert bool((topk_kl(other, top, direction) > 0).all())


def test_with_tail_is_a_distribution_and_floors_the_tail():
    lp = torch.log_softmax(_logits(7), -1).topk(K, dim=-1).values
    buckets = with_tail(lp)
    assert buckets.shape == (B, T, K + 1)
    torch.testing.assert_close(buckets.exp().sum(-1), torch.ones(B, T, dtype=lp.dtype))
    torch.testing.assert_close(topk_mass(lp), 1 - buckets[..., -1].exp())
    full = torch.log_softmax(_logits(8), -1)  # all the mass in the "top-k": tail floored, not log(0)
    assert torch.allclose(with_tail(full)[..., -1], torch.full((B, T), math.log(TAIL_FLOOR), dtype=full.dtype))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_masked_positions_may_hold_garbage(direction):
    s = torch.log_softmax(_logits(9), -1)[..., :K].clone().float()
    t = torch.log_softmax(_logits(10), -1)[..., :K].clone().float()
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[0, 0] = True
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[~mask] = float("inf")
    t_bad[~mask] = float("nan")
    t_bad[~mask, 0] = float("-inf")
    x = s_bad.clone().requires_grad_()
    got = masked_topk_kl(x, t_bad, mask, direction)
    got.sum().backward()
    assert torch.all(got[~mask] == 0) and torch.isfinite(x.grad).all() and torch.all(x.grad[~mask] == 0)
    torch.testing.assert_close(got[mask], topk_kl(s, t, direction)[mask])


def test_teacher_zero_probability_tokens():
    """A top-k entry with teacher probability 0 (a tiny vocabulary): the forward KL ignores it (0 log 0 = 0) with
    finite gradients; the reverse KL is infinite there, as the exact KL is."""
    s = torch.log_softmax(_logits(11), -1)[..., :K].clone().requires_grad_()
    t = torch.log_softmax(_logits(12), -1)[..., :K].clone()
    t[..., -1] = float("-inf")
    out = topk_kl(s, t, "forward")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()
    assert torch.isinf(topk_kl(s.detach(), t, "reverse")).all()


def test_errors_name_the_bad_input():
    a = torch.zeros(B, T, K)
    with pytest.raises(ValueError, match="direction"):
        topk_kl(a, a, "mixed")
    with pytest.raises(ValueError, match="same shape"):
        topk_kl(a, torch.zeros(B, T, K + 1), "forward")
    with pytest.raises(ValueError, match="mask"):
        masked_topk_kl(a, a, torch.ones(B, T + 1, dtype=torch.bool), "forward")


# ---- the student side: log-probs at given ids from (sharded) logits and the global log-sum-exp ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab,chunk", [(V, None), (37, 2)])
def test_logprobs_at_ids_match_the_reference_values_and_grads(dtype, vocab, chunk):
    gen = torch.Generator().manual_seed(13)
    logits = (4 * torch.randn(B, T, V, generator=gen)).to(dtype)
    ids = torch.randint(0, vocab, (B, T, K), generator=gen)
    ids[0, 0, 1] = ids[0, 0, 0]  # repeated ids add up in the gradient
    g = torch.randn(B, T, K, generator=gen)

    x = logits.clone().requires_grad_()
    lse = vocab_parallel_logsumexp(x, vocab_size=vocab, chunk_size=chunk)
    torch.testing.assert_close(lse, torch.logsumexp(logits.float()[..., :vocab], -1), rtol=1e-6, atol=1e-5)
    lp = vocab_parallel_logprobs_at(x, ids, lse, vocab_size=vocab, chunk_size=chunk)
    (lp * g).sum().backward()

    ref_x = logits.float().requires_grad_()
    want = token_logprobs_reference(ref_x, ids, vocab)
    (want * g).sum().backward()
    assert lp.dtype == torch.float32 and x.grad.dtype == dtype
    torch.testing.assert_close(lp, want.detach(), rtol=1e-5, atol=1e-5)
    assert torch.all(x.grad[..., vocab:] == 0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2 ** -8, atol=1e-6)
    torch.testing.assert_close(x.grad.float(), ref_x.grad, **tol)


def test_logprobs_at_ids_input_errors():
    logits = torch.zeros(2, 5, 10)
    lse = vocab_parallel_logsumexp(logits)
    with pytest.raises(ValueError, match="outside"):
        vocab_parallel_logprobs_at(logits, torch.full((2, 5, 3), 10), lse)
    with pytest.raises(ValueError, match="ids of shape"):
        vocab_parallel_logprobs_at(logits, torch.zeros(2, 5, dtype=torch.long), lse)
    with pytest.raises(ValueError, match="lse of shape"):
        vocab_parallel_logprobs_at(logits, torch.zeros(2, 5, 3, dtype=torch.long), lse[0])
    with pytest.raises(ValueError, match="integer"):
        vocab_parallel_logprobs_at(logits, torch.zeros(2, 5, 3), lse)


def test_memory_bench_small(capsys):
    """bench/topk_memory.py at a small size: the transport arithmetic of the issue (512 B vs 607,744 B per token at
    k = 64, V = 151,936), and the top-k loss's peak extra memory well below the full-vocabulary KL's."""
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import topk_memory
    finally:
        sys.path.remove(str(bench))
    assert topk_memory.transport_bytes_per_token(64, 151_936) == (512, 607_744)
    topk_memory.main(["--tokens", "256", "--vocab", "16384", "--k", "16"])  # 4 float32 chunks of the backward
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ratios = dict(item.split("=") for item in last.split(": ", 1)[1].split())
    assert float(ratios["transport_ratio"]) == 16384 * 4 / (16 * 8)
    assert float(ratios["loss_mem_ratio"]) < 0.5
