"""The multiple_choice task: record layouts (canonical, correct/incorrect, GPQA), reproducible shuffling, the prompt,
and the letter verifier on the ways models state a choice."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rlad_megatron.tasks.base import RecordError
from rlad_megatron.tasks.multiple_choice.reward import extract_choice
from rlad_megatron.tasks.multiple_choice.task import MultipleChoiceTask, shuffled
from rlad_megatron.tasks.registry import get_task

GPQA_ROW = {"Record ID": "rec7", "Question": "Which particle is a lepton?", "Correct Answer": "electron",
            "Incorrect Answer 1": "proton", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion",
            "High-level domain": "Physics", "Subdomain": "Particle physics"}


@pytest.mark.parametrize("text, letter, how", [
    ("Reasoning... so it must be the second.\nAnswer: B", "B", "answer"),
    ("answer: (c)\n\nANSWER: C", "C", "answer"),
    ("**Final Answer:** **D**", "D", "answer"),
    ("Answer: $\\boxed{A}$", "A", "answer"),
    ("Thus \\boxed{C}.", "C", "answer"),
    ("Thus \\boxed{(B)}", "B", "answer"),
    ("Thus \\boxed{\\text{D}}", "D", "answer"),
    ("A looks wrong, B too. Answer: C. Wait, (A) is ruled out.", "C", "answer"),  # explicit marker beats "(A)"
    ("Option A is tempting. Answer: A\nNo wait, Answer: D", "D", "answer"),      # the last marker wins
    ("Hence the correct option is (B).", "B", "answer_is"),
    ("So the answer is C", "C", "answer_is"),
    ("Comparing all four:\nC", "C", "last_line"),
    ("I pick (D) in the end", "D", "parenthesis"),
    ("The answer is A large number of ...", None, "none"),  # an article, not a choice
    ("Answer: E", None, "none"),                             # not one of four choices
    ("I don't know.", None, "none"),
])
def test_letter_extraction(text, letter, how) -> None:
    assert extract_choice(text, 4) == (letter, how)


def test_a_boxed_choice_text_counts_as_its_letter() -> None:
    assert extract_choice("so \\boxed{neutron}", 4, ["electron", "proton", "neutron", "pion"]) == ("C", "answer")


def test_gpqa_rows_are_shuffled_reproducibly_and_scored() -> None:
    task = get_task("multiple_choice")
    rec = task.to_record(GPQA_ROW)
    assert rec["id"] == "rec7" and rec["difficulty"] == "Physics" and rec["prompt"] == GPQA_ROW["Question"]
    assert sorted(rec["choices"]) == ["electron", "neutron", "pion", "proton"]
    assert rec["answer_text"] == "electron" and rec["choices"]["ABCD".index(rec["answer"])] == "electron"
    assert task.to_record(dict(GPQA_ROW))["choices"] == rec["choices"]  # same record, same order
    # the same order in another process (no Python hash randomization involved)
    code = ("from rlad_megatron.tasks.multiple_choice.task import shuffled; "
            "print(shuffled('electron', ['proton', 'neutron', 'pion'], 'rec7'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str((rec["choices"], rec["answer"]))
    assert MultipleChoiceTask(seed=1).to_record(GPQA_ROW)["choices"] != rec["choices"] or \
        MultipleChoiceTask(seed=2).to_record(GPQA_ROW)["choices"] != rec["choices"]
    assert MultipleChoiceTask(shuffle=False).to_record(GPQA_ROW)["answer"] == "A"
    right, wrong = f"Answer: {rec['answer']}", "Answer: " + next(c for c in "ABCD" if c != rec["answer"])
    assert task.reward(right, rec).correct and task.reward(right, rec).score == 1.0
    assert not task.reward(wrong, rec).correct and task.reward(wrong, rec).format_ok
    assert not task.reward("no idea", rec).format_ok
    message = task.user_message(rec)
    assert message.startswith("Which particle is a lepton?\n\nA) ") and "one of A, B, C, D." in message


def test_positions_spread_over_the_letters() -> None:
    letters = [shuffled("right", ["w1", "w2", "w3"], f"q{i}")[1] for i in range(400)]
    assert all(60 < letters.count(c) < 140 for c in "ABCD")


@pytest.mark.parametrize("answer, letter", [("C", "C"), ("(b)", "B"), (2, "C"), ("nine", "B")])
def test_canonical_rows_keep_their_order(answer, letter) -> None:
    rec = MultipleChoiceTask().to_record({"question": "q", "choices": ["eight", "nine", "ten"], "answer": answer})
    assert rec["choices"] == ["eight", "nine", "ten"] and rec["answer"] == letter and rec["prompt"] == "q"


@pytest.mark.parametrize("row, field", [
    ({"prompt": "q", "choices": ["a"], "answer": "A"}, "choices"),
    ({"prompt": "q", "choices": ["a", "b"], "answer": "C"}, "answer"),
    ({"prompt": "q", "choices": ["a", "b"], "answer": 5}, "answer"),
    ({"prompt": "q", "choices": ["a", ""], "answer": "A"}, "choices"),
    ({"prompt": "q", "correct": "a", "incorrect": []}, "incorrect"),
])
def test_bad_rows(row, field) -> None:
    with pytest.raises(RecordError) as err:
        MultipleChoiceTask().to_record(row)
    assert err.value.field == field
