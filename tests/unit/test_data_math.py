"""Math record layouts (canonical, GSM8K, MATH, Skywork-OR1) through the same dataset API; bad rows."""
from __future__ import annotations

import json

import pytest

from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.tasks.math.task import MathTask
from rlad_megatron.data.prompt_dataset import DatasetError, load_prompt_dataset
from rlad_megatron.tasks.registry import get_task, task_names

ROWS = [
    {"id": "c1", "prompt": "What is 2+3?", "answer": 5},
    {"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3+1000=1003\n#### 1,003"},
    {"problem": "Compute $\\frac{2}{4}$.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 2"},
    {"problem": "AIME: find n.", "answer": "204"},
    {"data_source": "skywork_amc", "prompt": [{"role": "user", "content": "Find x. Put it in \\boxed{}."}],
     "reward_model": {"ground_truth": "[\"7\", \"7.0\"]", "style": "rule"}, "extra_info": {"index": 99}},
]


def load(tmp_path, rows, **kw):
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_prompt_dataset(str(path), MathTask(), build_char_tokenizer(), max_prompt_tokens=512,
                               cache_dir=str(tmp_path / "hf"), **kw)


def test_all_layouts_load_to_canonical_records(tmp_path) -> None:
    d = load(tmp_path, ROWS)
    recs = d.records
    assert [r["id"] for r in recs] == ["c1", "math-1", "math-2", "math-3", "99"]
    assert [r["answer"] for r in recs] == ["5", "1003", "\\frac{1}{2}", "204", "7"]
    assert recs[4]["answers"] == ["7", "7.0"] and recs[4]["prompt"] == "Find x. Put it in \\boxed{}."
    assert [r.get("difficulty") for r in recs] == [None, "gsm8k", "Level 2", None, "skywork_amc"]
    assert d[0].prompt_text.endswith("within \\boxed{}.\nSolution:")
    assert "Please reason" not in d[4].prompt_text  # the prompt already asks for \boxed{}
    task = MathTask()
    assert task.reward("so \\boxed{0.5}", recs[2]).correct
    assert task.reward("#### 1003", recs[1]).correct
    assert task.difficulty(recs[0]) == "all"


@pytest.mark.parametrize(
    "row,field",
    [
        ({"question": "q", "answer": "no hashes"}, "answer"),
        ({"problem": "p", "solution": "no box"}, "solution"),
        ({"problem": "p"}, "answer"),
        ({"prompt": [{"role": "user", "content": "x"}], "reward_model": {"style": "rule"}},
         "reward_model.ground_truth"),
        ({"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "1"}}, "prompt"),
        ({"id": "e", "prompt": "p", "answer": ""}, "answer"),
    ],
)
def test_bad_math_rows(tmp_path, row, field) -> None:
    with pytest.raises(DatasetError, match=rf"row 1 .*field '{field}'"):
        load(tmp_path, [ROWS[0], row])
    assert len(load(tmp_path, [ROWS[0], row], bad_rows="skip")) == 1


def test_registry() -> None:
    assert task_names() == ["arithmetic", "carry_trap", "knights_knaves", "knights_knaves_compact", "math",
                            "multiple_choice", "sum_prefix"]
    assert isinstance(get_task("math"), MathTask)
    assert get_task("knights_knaves", correct=5.0).reward_config.correct == 5.0
    with pytest.raises(KeyError, match="unknown task 'nope'; known tasks: arithmetic"):
        get_task("nope")
