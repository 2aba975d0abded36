"""Logic-RL style K&K parser and reward: format part, answer part, adversarial outputs."""
from __future__ import annotations

import time

from rlad_megatron.tasks.knights_knaves.reward import KKRewardConfig, check_format, extract_answer_block, kk_reward

NAMES, SOL = ["Zoey", "Oliver"], [True, False]
GOOD = "<think>Zoey tells the truth.</think>\n<answer>(1) Zoey is a knight\n(2) Oliver is a knave</answer>"


def test_scores_follow_logic_rl() -> None:
    r = kk_reward(GOOD, NAMES, SOL)
    assert (r.score, r.correct, r.format_ok) == (3.0, True, True)
    wrong = GOOD.replace("Oliver is a knave", "Oliver is a knight")
    assert kk_reward(wrong, NAMES, SOL).score == 1.0 - 1.5
    missing = GOOD.replace("\n(2) Oliver is a knave", "")
    assert kk_reward(missing, NAMES, SOL).score == 1.0 - 2.0
    twice = GOOD.replace("</answer>", " Zoey is a knave</answer>")
    assert kk_reward(twice, NAMES, SOL).score == -1.0
    no_tags = "(1) Zoey is a knight\n(2) Oliver is a knave"
    r = kk_reward(no_tags, NAMES, SOL)
    assert (r.score, r.correct, r.format_ok) == (-3.0, False, False)


def test_format_rules_and_config() -> None:
    assert check_format(GOOD)
    assert not check_format("<answer>x</answer><think>y</think>")
    assert not check_format(GOOD + "<answer>")
    prefilled = GOOD.replace("<think>", "")
    assert not check_format(prefilled)
    cfg = KKRewardConfig(require_think_open=False, correct=1.0, format_ok=0.0)
    assert check_format(prefilled, cfg)
    assert kk_reward(prefilled, NAMES, SOL, cfg).score == 1.0
    assert "knight" in extract_answer_block(GOOD)
    assert extract_answer_block("<answer> unterminated") is None


def test_case_and_spacing_tolerance() -> None:
    text = "<think>.</think><answer>(1) zoey  is a Knight, (2) Oliver is knave</answer>"
    assert kk_reward(text, NAMES, SOL).correct


def test_adversarial_outputs_are_fast() -> None:
    bad = [
        "<answer>" + "Zoey is a " * 20_000 + "</answer>",
        "<think>" * 50_000,
        "<think></think><answer>" + "{" * 100_000,
        "<think></think><answer>" + "Zoey " * 30_000 + "</answer>",
        "x" * 100_000,
    ]
    for text in bad:
        start = time.perf_counter()
        r = kk_reward(text, NAMES * 4, SOL * 4)
        assert time.perf_counter() - start < 1.0 and not r.correct
