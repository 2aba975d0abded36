"""The W1 benchmark task: records, leading-digit reward, registration."""
from __future__ import annotations

import pytest

from rlad_megatron.tasks.sum_prefix.task import SumPrefixTask, generate_sum_records, leading_number
from rlad_megatron.tasks.base import RecordError
from rlad_megatron.tasks.registry import get_task, task_names


def test_records_are_deterministic_three_digit_sums() -> None:
    records = generate_sum_records(64, seed=0)
    assert records == generate_sum_records(64, seed=0)
    assert records != generate_sum_records(64, seed=1)
    assert len({r["prompt"] for r in records}) > 60
    for r in records:
        a, b = r["prompt"][:-1].split("+")
        assert len(a) == len(b) == 3 and r["prompt"].endswith("=")
        assert r["answer"] == str(int(a) + int(b))


@pytest.mark.parametrize("completion, expected", [
    ("579", "579"), ("579 and more", "579"), ("0579x", "579"), ("000", "0"), (" 579", None), ("x579", None), ("", None),
])
def test_leading_number(completion: str, expected: str | None) -> None:
    assert leading_number(completion) == expected


def test_reward_scores_leading_digits_only() -> None:
    task = SumPrefixTask()
    record = {"id": "x", "prompt": "123+456=", "answer": "579"}
    assert task.reward("579", record).score == 1.0
    assert task.reward("579abc12", record).correct
    assert task.reward("5790", record).score == 0.0  # more digits: a different number
    assert task.reward("57", record).score == 0.0
    wrong = task.reward("abc", record)
    assert wrong.score == 0.0 and not wrong.format_ok


def test_registered_and_validates_prompts() -> None:
    assert "sum_prefix" in task_names()
    task = get_task("sum_prefix")
    assert task.to_record({"id": "a", "prompt": "1+2=", "answer": 3})["answer"] == "3"
    with pytest.raises(RecordError, match="prompt"):
        task.to_record({"id": "a", "prompt": "what is 1+2", "answer": "3"})
