"""Math answer extraction, math-verify reward, adversarial outputs under a time bound."""
from __future__ import annotations

import time

import pytest

from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.tasks.math.reward import MathRewardConfig, extract_boxed, extract_final_answer, math_reward


@pytest.mark.parametrize(
    "text,want",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{a{b{c}}d}", "a{b{c}}d"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{3} and later \\boxed{unterminated", "3"),
        ("\\boxed{\\boxed{9}}", "9"),
        ("no box", None),
    ],
)
def test_extract_boxed(text: str, want: str | None) -> None:
    assert extract_boxed(text) == want


def test_fallbacks_in_order() -> None:
    assert extract_final_answer("... The answer is 17.") == ("17", "answer_is")
    assert extract_final_answer("so the final answer is: $3/4$\n") == ("3/4", "answer_is")
    assert extract_final_answer("steps\n#### 1,234") == ("1,234", "hashes")
    assert extract_final_answer("we get 3 then 12 apples") == ("12", "last_number")
    assert extract_final_answer("we get 3 then 12", fallbacks=False) == (None, "none")
    assert extract_final_answer("nothing here") == (None, "none")


@pytest.mark.parametrize(
    "completion,golds,correct",
    [
        ("\\boxed{0.5}", ["\\frac{1}{2}"], True),
        ("\\boxed{\\dfrac{1}{2}}", ["\\frac{1}{2}"], True),
        ("\\boxed{2^{1/2}}", ["\\sqrt{2}"], True),
        ("\\boxed{1,000}", ["1000"], True),
        ("The answer is 72.", ["72"], True),
        ("\\boxed{71}", ["72"], False),
        ("\\boxed{x}", ["5", "x"], True),  # any of several acceptable answers
    ],
)
def test_math_verify_reward(completion: str, golds: list[str], correct: bool) -> None:
    r = math_reward(completion, golds)
    assert r.correct is correct and r.score == (1.0 if correct else 0.0)


def test_format_flag_and_config() -> None:
    assert math_reward("\\boxed{3}", ["3"]).format_ok
    r = math_reward("it is 3", ["3"])
    assert r.correct and not r.format_ok
    strict = MathRewardConfig(fallbacks=False, no_answer=-1.0)
    assert math_reward("it is 3", ["3"], strict).score == -1.0


ADVERSARIAL = [
    "\\boxed{" + "9" * 100_000 + "}",                 # huge number: over max_answer_chars, never parsed
    "\\boxed{" * 30_000,                               # unterminated, nested openers
    "{" * 50_000 + "}" * 50_000 + "\\boxed{1}",        # deep nesting elsewhere
    "The answer is " + "1" * 100_000,                  # 100k-char answer
    "x" * 100_000,
    "<answer>" * 10_000 + "\\boxed{",                  # unterminated tags
    "\\boxed{9^{9^{9^{9^{9}}}}}",                      # sympy tower
    "\\boxed{" + "(" * 250 + "}",
]


def test_adversarial_extraction_is_linear_time() -> None:
    more = ["answer is " * 10_000, "#### " * 20_000, "1," * 50_000, "\\boxed " * 20_000,
            "\\boxed{" * 20_000 + "}" * 20_000]
    for text in ADVERSARIAL + more:
        t0 = time.perf_counter()
        extract_final_answer(text)
        assert time.perf_counter() - t0 < 1.0, text[:40]


def test_adversarial_rewards_under_guard_finish_in_bounded_time() -> None:
    from rlad_megatron.tasks.math.task import MathTask

    task = MathTask()
    rec = {"id": "m", "prompt": "p", "answer": "3", "answers": ["3"]}
    with RewardGuard(task.reward, timeout_s=2.0) as g:
        assert g.backend == "process"
        t0 = time.perf_counter()
        results = g.score_many([(text, rec) for text in ADVERSARIAL] + [("\\boxed{3}", rec)])
        elapsed = time.perf_counter() - t0
    assert not any(r.correct for r in results[:-1])
    assert results[-1].correct
    assert elapsed < 2.0 * len(ADVERSARIAL) + 30
    assert g.stats.calls == len(ADVERSARIAL) + 1
