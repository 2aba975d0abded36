"""Token-budget and packed micro-batches: every sequence lands in exactly one micro-batch, within the budget, and
every per-token tensor (tokens, loss mask, engine / old / teacher / reference log-probs) comes back aligned to its
token after regrouping, packing and unpacking (property tests on random batches)."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlad_megatron.learner.batching import (
    MicroBatching,
    build_micro_batches,
    filler_micro_batch,
    plan_packed,
    plan_padded,
    scatter_token_values,
)
from rlad_megatron.learner.packing import block_causal_mask, restarting_positions
from rlad_megatron.learner.sequences import SequenceBatch

PAD = 0


def random_batch(lengths: list[int], seed: int) -> SequenceBatch:
    """Right-padded sequences whose every per-token value encodes (row, position): misalignment cannot hide."""
    g = torch.Generator().manual_seed(seed)
    n, width = len(lengths), max(lengths)
    tokens = torch.randint(1, 1000, (n, width), generator=g)
    mask = torch.zeros(n, width - 1, dtype=torch.bool)
    for i, length in enumerate(lengths):
        tokens[i, length:] = PAD
        prompt = 1 + i % max(1, length - 1)
        mask[i, prompt - 1:length - 1] = True
    code = torch.arange(n).unsqueeze(1) * 10_000.0 + torch.arange(width - 1).unsqueeze(0)
    topk = code.unsqueeze(-1) * 10 + torch.arange(3)  # [n, L-1, k=3]: (row, position, j) encoded
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.arange(n, dtype=torch.float32),
                         rewards=torch.randn(n, generator=g), correct=torch.arange(n) % 2 == 0,
                         engine_logprobs=-code, old_logprobs=-code - 0.25, teacher_logprobs=-code - 0.5,
                         ref_logprobs=-code - 0.75, teacher_topk_ids=topk.int(), teacher_topk_logprobs=-topk,
                         lengths=torch.tensor(lengths))


lengths_st = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, budget=st.integers(min_value=1, max_value=128), multiple=st.sampled_from([1, 2, 8]))
def test_padded_plan_covers_each_sequence_once_within_budget(lengths, budget, multiple):
    groups = plan_padded(lengths, budget, multiple)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        width = -(-max(max(lengths[i] for i in g), 2) // multiple) * multiple
        assert len(g) * width <= budget or len(g) == 1  # only a lone over-budget sequence may exceed it


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, budget=st.integers(min_value=1, max_value=128), multiple=st.sampled_from([1, 2, 8]))
def test_packed_plan_covers_each_sequence_once_within_budget(lengths, budget, multiple):
    rows = plan_packed(lengths, budget, multiple)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    capacity = max(budget // multiple * multiple, 1)
    for r in rows:
        assert sum(lengths[i] for i in r) <= capacity or len(r) == 1


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(min_value=2, max_value=40), min_size=1, max_size=24),
       budget=st.integers(min_value=8, max_value=160), packing=st.booleans(), multiple=st.sampled_from([1, 2]),
       seed=st.integers(0, 5))
def test_regroup_and_pack_round_trip_exactly(lengths, budget, packing, multiple, seed):
    batch = random_batch(lengths, seed)
    batching = MicroBatching(max_tokens=budget, packing=packing, length_multiple=multiple)
    micro = build_micro_batches(batch, batching)
    seen = torch.cat([m.rows for m in micro]).sort().values
    assert torch.equal(seen, torch.arange(len(batch)))
    for m in micro:
        assert m.width % multiple == 0
        assert int(m.tokens.shape[0]) * m.width <= max(budget, m.width) or len(m) == 1
        seq = m.sequences
        for j, row in enumerate(m.rows.tolist()):
            n = lengths[row]
            valid = m.valid[j]
            assert int(valid.sum()) == n - 1
            # the row's tokens, and each per-token tensor, are the original ones at every valid position
            assert torch.equal(seq.tokens[j, :n], batch.tokens[row, :n])
            for name in ("loss_mask", "engine_logprobs", "old_logprobs", "teacher_logprobs", "ref_logprobs",
                         "teacher_topk_ids", "teacher_topk_logprobs"):
                got, want = getattr(seq, name)[j], getattr(batch, name)[row]
                assert torch.equal(got[: n - 1], want[: n - 1]), name
            assert seq.advantages[j] == batch.advantages[row] and seq.correct[j] == batch.correct[row]
        # the model's per-position predictions, unpacked, sit at each sequence's own positions: simulate a model
        # whose output at a row position is the id of the token it predicts (the next one in the row)
        predicted = m.tokens[:, 1:].double()
        unpacked = m.unpack(predicted)
        for j, row in enumerate(m.rows.tolist()):
            n = lengths[row]
            assert torch.equal(unpacked[j, : n - 1], batch.tokens[row, 1:n].double())
        # pack is unpack's inverse for inputs: each sequence's next-token ids land where the model predicts them,
        # and per-position top-k ids come back unchanged; positions no sequence owns hold 0
        packed = m.pack(seq.tokens[:, 1:])
        owned = m.pack(torch.ones_like(seq.tokens[:, 1:]).masked_fill(~m.valid, 0)).bool()
        assert torch.equal(packed[owned], m.tokens[:, 1:][owned]) and not packed[~owned].any()
        ids = m.pack(seq.teacher_topk_ids)
        assert ids.shape == (m.tokens.shape[0], m.width - 1, 3)
        assert torch.equal(m.unpack(ids)[m.valid], seq.teacher_topk_ids[m.valid])
    # and scattering per-sequence values back gives the [B, L-1] layout
    values = [(m, m.sequences.teacher_logprobs) for m in micro]
    back = scatter_token_values(values, len(batch), batch.tokens.shape[1] - 1)
    real = torch.arange(batch.tokens.shape[1] - 1).unsqueeze(0) < (batch.lengths - 1).unsqueeze(1)
    assert torch.equal(back[real], batch.teacher_logprobs[real])
    assert torch.equal(back[~real], torch.zeros_like(back[~real]))


def test_fixed_layout_is_todays():
    batch = random_batch([5, 9, 3, 7], 0)
    micro = build_micro_batches(batch, MicroBatching(micro_batch_size=2))
    assert [m.rows.tolist() for m in micro] == [[0, 1], [2, 3]]
    assert all(m.width == 9 and m.gather_rows is None for m in micro)
    assert torch.equal(micro[1].tokens, batch.tokens[2:4])


def test_block_mask_and_positions():
    mask = block_causal_mask([2, 3], 6)[0, 0]
    allowed = ~mask
    assert allowed[1].tolist() == [True, True, False, False, False, False]
    assert allowed[4].tolist() == [False, False, True, True, True, False]  # its own sequence only
    assert allowed[5].tolist() == [False] * 5 + [True]  # tail padding sees itself
    assert restarting_positions([2, 3], 6).tolist() == [[0, 1, 0, 1, 2, 0]]


def test_over_budget_sequence_gets_its_own_micro_batch():
    batch = random_batch([30, 4, 4], 0)
    micro = build_micro_batches(batch, MicroBatching(max_tokens=16))
    assert [m.rows.tolist() for m in micro] == [[0], [1, 2]]
    assert micro[0].width == 30


def test_filler_micro_batch_is_empty():
    batch = random_batch([5, 6], 0)
    filler = filler_micro_batch(batch, 4)
    assert len(filler) == 0 and filler.width == 4 and filler.sequences.loss_mask.shape == (0, 3)


@settings(max_examples=60, deadline=None)
@given(work=st.lists(st.integers(min_value=1, max_value=2000), min_size=0, max_size=40),
       ranks=st.integers(min_value=1, max_value=4))
def test_deal_by_work_is_a_partition_and_near_balanced(work, ranks):
    from rlad_megatron.learner.balance import deal_by_work

    dealt = deal_by_work(work, ranks)
    assert sorted(i for d in dealt for i in d) == list(range(len(work)))
    loads = [sum(work[i] for i in d) for d in dealt]
    # longest-processing-time: no rank exceeds the average by more than the largest single item
    if work:
        assert max(loads) <= sum(work) / ranks + max(work)


def test_top_k_fields_travel_through_concat_and_the_fixed_layout():
    from rlad_megatron.learner.balance import concat_batches

    a, b = random_batch([5, 9], 0), random_batch([3, 4, 12], 1)
    both = concat_batches([a, b], PAD)
    assert both.teacher_topk_ids.shape == (5, 11, 3) and both.teacher_topk_ids.dtype == torch.int32
    assert torch.equal(both.teacher_topk_logprobs[:2, :8], a.teacher_topk_logprobs)
    assert torch.equal(both.teacher_topk_ids[2:], b.teacher_topk_ids) and not both.teacher_topk_ids[:2, 8:].any()
    micro = build_micro_batches(both, MicroBatching(micro_batch_size=5))
    assert torch.equal(micro[0].pack(micro[0].sequences.teacher_topk_ids), both.teacher_topk_ids)
    filler = filler_micro_batch(both, 4)
    assert filler.sequences.teacher_topk_ids.shape == (0, 3, 3)
    assert filler.pack(filler.sequences.teacher_topk_ids).tolist() == [[[0] * 3] * 3]


def test_context_parallel_split_of_per_position_ids_matches_the_targets():
    from rlad_megatron.learner.context_parallel import ContextParallelRows

    tokens = torch.arange(1, 15).view(2, 7)
    for rank in range(2):
        rows = ContextParallelRows(tokens, torch.arange(7).unsqueeze(0), None, 2, rank, None)
        ids = tokens[:, 1:].unsqueeze(-1) * torch.tensor([1, -1])
        split = rows.split(ids)
        assert torch.equal(split[..., 0], rows.targets) and torch.equal(split[..., 1], -rows.targets)
