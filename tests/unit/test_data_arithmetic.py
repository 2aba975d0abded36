"""The CPU demo task: records, reference chain of thought, reward, SFT targets."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from rlad_megatron.tasks.arithmetic.task import ArithmeticTask, generate_records, reference_cot
from rlad_megatron.tiny.sft import sft_example
from rlad_megatron.data.char_tokenizer import build_char_tokenizer


def test_reference_cot_format() -> None:
    assert reference_cot(345, 78) == "5+8+0=13\n4+7+1=12\n3+0+1=4\n#### 423"
    assert reference_cot(99, 1) == "9+1+0=10\n9+0+1=10\n#### 100"
    assert reference_cot(0, 0) == "0+0+0=0\n#### 0"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_reference_cot_is_consistent_and_scores_correct(a: int, b: int) -> None:
    cot = reference_cot(a, b)
    lines = cot.split("\n")
    assert lines[-1] == f"#### {a + b}"
    digits = [int(line.split("=")[1]) % 10 for line in lines[:-1]]
    carry_out = int(lines[-2].split("=")[1]) // 10
    assert int((str(carry_out) if carry_out else "") + "".join(map(str, digits[::-1]))) == a + b
    task = ArithmeticTask()
    rec = {"id": "x", "prompt": f"{a}+{b}=", "answer": str(a + b)}
    assert task.reward(cot, rec).correct


def test_generator_is_deterministic_and_covers_difficulties() -> None:
    a = generate_records(300, seed=11, min_digits=1, max_digits=4)
    assert a == generate_records(300, seed=11, min_digits=1, max_digits=4)
    assert a != generate_records(300, seed=12, min_digits=1, max_digits=4)
    assert {r["difficulty"] for r in a} == {"d1", "d2", "d3", "d4"}
    for r in a:
        x, y = r["prompt"][:-1].split("+")
        assert int(x) + int(y) == int(r["answer"])
        assert r["difficulty"] == f"d{max(len(x), len(y))}"
    assert len({r["id"] for r in a}) == 300


def test_reward_cases() -> None:
    t = ArithmeticTask(correct_score=1.0, wrong_score=-0.5, no_answer_score=-1.0)
    rec = {"id": "x", "prompt": "12+30=", "answer": "42"}
    assert t.reward("2+0+0=2\n1+3+0=4\n#### 42", rec).score == 1.0
    assert t.reward("#### 042", rec).correct
    wrong = t.reward("#### 41", rec)
    assert (wrong.score, wrong.correct, wrong.format_ok) == (-0.5, False, True)
    none = t.reward("I think 42", rec)
    assert (none.score, none.correct, none.format_ok) == (-1.0, False, False)
    assert t.reward("#### 1\n#### 42", rec).correct  # the last answer counts


def test_reward_adversarial_inputs_are_fast() -> None:
    import time

    t = ArithmeticTask()
    rec = {"id": "x", "prompt": "1+2=", "answer": "3"}
    for text in ["#" * 100_000, "#### " + "9" * 100_000, "#### 3" * 20_000, "\u0000" * 100_000]:
        start = time.perf_counter()
        t.reward(text, rec)
        assert time.perf_counter() - start < 1.0


def test_sft_example_ends_with_eos_and_stays_in_alphabet() -> None:
    tok = build_char_tokenizer()
    task = ArithmeticTask()
    rec = generate_records(1, seed=0, min_digits=5, max_digits=5)[0]
    p, t = sft_example(task, rec, tok)
    assert p == tok(rec["prompt"])["input_ids"]
    assert t[-1] == tok.eos_token_id and tok.unk_token_id not in p + t
    assert tok.decode(t, skip_special_tokens=True) == task.reference_completion(rec)


def test_reference_completion_rejects_bad_prompt() -> None:
    with pytest.raises(ValueError, match="not 'a\\+b='"):
        ArithmeticTask().reference_completion({"id": "q", "prompt": "1-2=", "answer": "3"})
