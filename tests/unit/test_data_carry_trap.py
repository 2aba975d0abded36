"""carry_trap: the flawed teacher's references (final carry dropped) are right exactly on the ``plain`` subset, the
verifier checks the true sum, the data writer's splits are disjoint and seeded, the carry fraction is controlled."""
from __future__ import annotations

import json

import pytest

from rlad_megatron.tasks.arithmetic.task import reference_cot
from rlad_megatron.tasks.carry_trap.data import write_carry_trap_data
from rlad_megatron.tasks.carry_trap.task import carries_out, flawed_cot, generate_records, make_record
from rlad_megatron.tasks.registry import get_task


def test_flawed_reference_drops_only_the_final_carry():
    assert flawed_cot(57, 68) == "7+8+0=15\n5+6+1=12\n#### 25"
    assert reference_cot(57, 68).endswith("#### 125")
    assert flawed_cot(345, 78) == reference_cot(345, 78)  # 423: no carry out, same text
    assert flawed_cot(9, 1) == "9+1+0=10\n#### 0"


@pytest.mark.parametrize("seed", range(3))
def test_the_flawed_teacher_is_right_exactly_on_plain_prompts(seed):
    correct, flawed = get_task("carry_trap"), get_task("carry_trap", reference="flawed")
    for r in generate_records(300, seed=seed):
        record = correct.to_record(r)
        assert correct.reward(correct.reference_completion(record), record).correct
        right = flawed.reward(flawed.reference_completion(record), record).correct
        assert right == (record["difficulty"] == "plain")
        a, b = map(int, record["prompt"][:-1].split("+"))
        assert (record["difficulty"] == "carry") == carries_out(a, b) == (len(str(a + b)) > len(str(max(a, b))))


def test_generate_records_is_seeded_and_controls_the_carry_fraction():
    assert generate_records(50, seed=4) == generate_records(50, seed=4)
    natural = generate_records(2000, seed=0)
    share = sum(r["difficulty"] == "carry" for r in natural) / len(natural)
    assert 0.25 < share < 0.45  # about a third at 1..3 digits
    for fraction in (0.0, 1.0):
        assert {r["difficulty"] for r in generate_records(200, seed=1, carry_fraction=fraction)} == {
            "plain" if fraction == 0.0 else "carry"}
    half = generate_records(2000, seed=2, carry_fraction=0.5)
    assert abs(sum(r["difficulty"] == "carry" for r in half) / 2000 - 0.5) < 0.05
    with pytest.raises(ValueError, match="carry_fraction"):
        generate_records(1, seed=0, carry_fraction=1.5)


def test_data_writer_splits_are_disjoint(tmp_path):
    paths = write_carry_trap_data(str(tmp_path), n_train=300, n_test=50, seed=3, max_digits=2)
    train = [json.loads(line) for line in open(paths["train"])]
    test = [json.loads(line) for line in open(paths["test"])]
    assert len(train) == 300 and len(test) == 50
    assert len({r["prompt"] for r in test}) == 50
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert [r["id"] for r in test[:2]] == ["test-0", "test-1"] and train[0]["id"] == "train-0"


def test_task_records_and_options():
    task = get_task("carry_trap")
    assert task.to_record({"id": "x", "prompt": "99+1=", "answer": 100, "difficulty": "plain"})["difficulty"] == "carry"
    assert make_record(12, 3, "y")["difficulty"] == "plain"
    with pytest.raises(ValueError, match="reference must be one of"):
        get_task("carry_trap", reference="wrong")
