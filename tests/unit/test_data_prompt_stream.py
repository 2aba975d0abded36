"""PromptStream: deterministic epochs, disjoint dp shards, resume from state_dict."""
from __future__ import annotations

import json

import pytest

from rlad_megatron.tasks.arithmetic.task import ArithmeticTask, generate_records
from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.data.prompt_stream import PromptStream


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    path = d / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate_records(22, seed=0)))
    return load_prompt_dataset(str(path), ArithmeticTask(), build_char_tokenizer(), max_prompt_tokens=64,
                               cache_dir=str(d / "hf"))


def ids(batch):
    return [e.id for e in batch]


def test_same_seed_same_order_other_seed_differs(dataset) -> None:
    a = [ids(PromptStream(dataset, 4, seed=1).next_batch())]
    b = [ids(PromptStream(dataset, 4, seed=1).next_batch())]
    c = [ids(PromptStream(dataset, 4, seed=2).next_batch())]
    assert a == b and a != c


def test_epoch_covers_each_prompt_once_then_reshuffles(dataset) -> None:
    s = PromptStream(dataset, 5, seed=0)
    epoch0 = sum((ids(s.next_batch()) for _ in range(4)), [])  # 20 of 22; the partial batch is dropped
    assert len(set(epoch0)) == 20 and s.epoch == 0
    epoch1 = ids(s.next_batch())
    assert s.epoch == 1 and s.position == 5
    assert epoch1 != epoch0[:5]


def test_dp_shards_are_disjoint_and_union_is_the_global_batch(dataset) -> None:
    single = PromptStream(dataset, 6, seed=7)
    ranks = [PromptStream(dataset, 2, seed=7, dp_rank=r, dp_size=3) for r in range(3)]
    for _ in range(5):
        glob = ids(single.next_batch())
        parts = [ids(s.next_batch()) for s in ranks]
        assert sum(parts, []) == glob
        assert len(set(sum(parts, []))) == 6


def test_resume_continues_exactly(dataset) -> None:
    s = PromptStream(dataset, 3, seed=5)
    for _ in range(9):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [ids(s.next_batch()) for _ in range(6)]
    r = PromptStream(dataset, 3, seed=5)
    r.load_state_dict(state)
    assert [ids(r.next_batch()) for _ in range(6)] == expected
    # the position is global: resuming on 3 ranks x 1 prompt gives the same global batches
    shards = [PromptStream(dataset, 1, seed=5, dp_rank=k, dp_size=3) for k in range(3)]
    for sh in shards:
        sh.load_state_dict(state)
    assert [sum((ids(sh.next_batch()) for sh in shards), []) for _ in range(6)] == expected


def test_resume_refuses_other_data_or_seed(dataset) -> None:
    s = PromptStream(dataset, 3, seed=5)
    state = s.state_dict()
    with pytest.raises(ValueError, match="seed"):
        PromptStream(dataset, 3, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="another dataset"):
        PromptStream(dataset, 3, seed=5).load_state_dict({**state, "fingerprint": "0" * 16})


def test_bad_arguments(dataset) -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PromptStream(dataset, 12, dp_size=2)
    with pytest.raises(ValueError, match="dp_rank"):
        PromptStream(dataset, 2, dp_rank=2, dp_size=2)
