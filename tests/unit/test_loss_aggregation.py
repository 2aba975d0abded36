"""Global-denominator aggregation: plain-Python values, and exact invariance of loss and gradient under re-splitting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlad_megatron.loss import Denominators, aggregate, local_denominators

MODES = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]


def _python_reference(values: list[list[float]], mask: list[list[bool]], mode: str, max_len: int) -> float:
    seqs = [[v for v, m in zip(row, mrow) if m] for row, mrow in zip(values, mask)]
    seqs = [s for s in seqs if s]
    if mode == "token-mean":
        flat = [v for s in seqs for v in s]
        return sum(flat) / len(flat)
    if mode == "seq-mean-token-mean":
        return sum(sum(s) / len(s) for s in seqs) / len(seqs)
    return sum(sum(s) / max_len for s in seqs) / len(seqs)


@st.composite
def batch_and_split(draw):
    b = draw(st.integers(1, 8))
    t = draw(st.integers(1, 6))
    vals = draw(st.lists(st.floats(-5, 5, width=32), min_size=b * t, max_size=b * t))
    mask = draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
    mask[0] = True  # at least one valid token in the batch
    cuts = sorted(draw(st.lists(st.integers(1, max(1, b - 1)), max_size=3))) if b > 1 else []
    return (torch.tensor(vals, dtype=torch.float64).view(b, t), torch.tensor(mask).view(b, t),
            [0] + [c for c in cuts if 0 < c < b] + [b])


@settings(max_examples=80, deadline=None)
@given(data=batch_and_split(), mode=st.sampled_from(MODES))
def test_micro_batch_shares_add_up_to_the_full_batch_loss_and_grad(data, mode):
    values, mask, bounds = data
    max_len = values.shape[1] + 3
    full_x = values.clone().requires_grad_()
    full_den = local_denominators(mask)
    full = aggregate(full_x, mask, mode=mode, denominators=full_den, max_response_len=max_len)
    full.backward()
    assert full.item() == pytest.approx(
        _python_reference(values.tolist(), mask.tolist(), mode, max_len), rel=1e-12, abs=1e-12)

    pieces = list(zip(bounds[:-1], bounds[1:]))
    den = Denominators(0.0, 0.0)
    for a, b in pieces:
        den = den + local_denominators(mask[a:b])
    assert den == full_den
    split_x = values.clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for a, b in pieces:
        share = aggregate(split_x[a:b], mask[a:b], mode=mode, denominators=den, max_response_len=max_len)
        share.backward()
        total = total + share.detach()
    assert total.item() == pytest.approx(full.item(), rel=1e-12, abs=1e-12)
    assert torch.equal(split_x.grad, full_x.grad)  # per-element gradients do not depend on the split


def test_masked_positions_are_ignored_even_if_nan():
    values = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[True, False], [True, False]])
    loss = aggregate(values, mask, mode="token-mean", denominators=local_denominators(mask))
    loss.backward()
    assert loss.item() == 1.5
    assert values.grad.tolist() == [[0.5, 0.0], [0.5, 0.0]]


def test_denominators_tensor_round_trip_and_errors():
    den = Denominators(12.0, 3.0)
    assert Denominators.from_tensor(den.as_tensor()) == den
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="num_tokens must be > 0"):
        aggregate(torch.ones(2, 3), mask, mode="token-mean", denominators=Denominators(0.0, 2.0))
    with pytest.raises(ValueError, match="max_response_len"):
        aggregate(torch.ones(2, 3), mask, mode="seq-mean-token-sum-norm", denominators=den)
    with pytest.raises(ValueError, match="aggregation mode must be one of"):
        aggregate(torch.ones(2, 3), mask, mode="mean", denominators=den)
    with pytest.raises(ValueError, match="only 0 and 1"):
        aggregate(torch.ones(2, 3), torch.full((2, 3), 0.5), mode="token-mean", denominators=den)
    assert local_denominators(torch.tensor([[1, 1, 0], [0, 0, 0]])) == Denominators(2.0, 1.0)
