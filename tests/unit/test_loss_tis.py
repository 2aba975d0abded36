"""Truncated importance-sampling weights against a plain-Python reference."""
from __future__ import annotations

import math

import pytest
import torch

from rlad_megatron.loss import tis_weights


def test_tis_weights_reference():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -4.0]], requires_grad=True)
    eng = torch.tensor([[-1.5, -1.0, -0.5], [-0.5, -2.0, -4.0]])
    w = tis_weights(old, eng, cap=2.0)
    expected = [[min(math.exp(o - e), 2.0) for o, e in zip(ro, re)] for ro, re in zip(old.tolist(), eng.tolist())]
    assert torch.allclose(w, torch.tensor(expected), atol=1e-6)
    assert not w.requires_grad and w.dtype == torch.float32
    assert w.max() == 2.0  # truncated
    with pytest.raises(ValueError, match="same shape"):
        tis_weights(old, eng[:, :2], cap=2.0)
    with pytest.raises(ValueError, match="cap"):
        tis_weights(old, eng, cap=0.0)
