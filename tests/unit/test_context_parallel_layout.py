"""Context parallelism's load-balanced sequence layout (rlad_megatron/learner/context_parallel.py) against the
unsplit rows: every token on exactly one rank, in Megatron's chunk order, and merged back exactly."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.learner.context_parallel import cp_chunk_index, cp_merge, cp_padded_length, cp_split


def test_chunks_pair_an_early_and_a_late_one():
    assert [cp_chunk_index(2, r) for r in range(2)] == [(0, 3), (1, 2)]
    assert [cp_chunk_index(4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]


def test_split_by_hand_and_merge_back():
    row = torch.arange(8).unsqueeze(0)  # [1, 8], CP=2 -> chunks of 2: [0 1] [2 3] [4 5] [6 7]
    assert cp_split(row, 2, 0).tolist() == [[0, 1, 6, 7]]
    assert cp_split(row, 2, 1).tolist() == [[2, 3, 4, 5]]
    assert torch.equal(cp_merge([cp_split(row, 2, r) for r in range(2)]), row)


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_every_token_on_one_rank_and_aligned_tensors_stay_aligned(cp):
    length = cp_padded_length(37, cp)
    assert length >= 37 and length % (2 * cp if cp > 1 else 1) == 0 and length - 37 < 2 * cp
    tokens = torch.randint(0, 100, (3, length))
    positions = torch.arange(length).expand(3, -1)
    hidden = torch.randn(length, 3, 5)  # Megatron's [s, b, h]: sequence dim 0
    parts = [cp_split(tokens, cp, r) for r in range(cp)]
    assert sum(p.shape[1] for p in parts) == length
    assert sorted(torch.cat([cp_split(positions, cp, r) for r in range(cp)], 1)[0].tolist()) == list(range(length))
    for r in range(cp):  # each token keeps its position id
        assert torch.equal(cp_split(tokens, cp, r), tokens.gather(1, cp_split(positions, cp, r)))
    assert torch.equal(cp_merge(parts), tokens)
    assert torch.equal(cp_merge([cp_split(hidden, cp, r, dim=0) for r in range(cp)], dim=0), hidden)


def test_bad_lengths_and_ranks():
    with pytest.raises(ValueError, match=r"does not split into 2 x CP=2 chunks: pad rows to .* = 8"):
        cp_split(torch.zeros(1, 6), 2, 0)
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        cp_chunk_index(2, 2)
