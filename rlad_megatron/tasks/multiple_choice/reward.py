"""The letter a multiple-choice response chose, and its reward.

Markers, strongest first (in each class the one nearest the end of the response wins, so that a letter discussed
while reasoning loses to the final one):
1. ``Answer: C`` (any case of "answer", "Final answer:" too; decorations around the letter such as ``**C**``,
   ``(C)``, ``$\\boxed{C}$``) and ``\\boxed{C}`` / ``\\boxed{(C)}`` / ``\\boxed{\\text{C}}``; a ``\\boxed{}`` that
   holds the text of one choice counts as that choice;
2. "the answer is C" / "the correct option is (C)" at the end of a sentence or line;
3. a last line that is only the letter (``C``, ``(C)``, ``C.``), or the last ``(C)`` of the response.
Only letters of the question's choices count (``A`` .. the n-th letter). One linear pass per pattern over at most
the last 4000 characters: bounded time on any input.
"""
from __future__ import annotations

import re

from rlad_megatron.rewards.base import RewardResult

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TAIL_CHARS = 4000
_DECOR = r"[\s*_(\[{$]*(?:\\boxed\s*\{\s*)?(?:\\text(?:bf)?\s*\{\s*)?\(?"
_ANSWER_COLON = re.compile(r"(?i:answer)\s*(?:\*\*)?\s*[:：]" + _DECOR + r"([A-Z])(?![A-Za-z0-9])")
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?\(?([A-Z])\)?\s*\}")
_BOXED_ANY = re.compile(r"\\boxed\s*\{([^{}]{1,300})\}")
_ANSWER_IS = re.compile(r"(?i:answer|option|choice)\s+is\s*:?" + _DECOR
                        + r"([A-Z])(?![A-Za-z0-9])[)*\]}$]*\s*(?:[.,;!]|$)", re.MULTILINE)
_LONE_LINE = re.compile(r"^\s*[*(\[]*([A-Z])[)\].*]*\s*$")
_PAREN = re.compile(r"\(([A-Z])\)")


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("$", "")).strip().lower()


def extract_choice(text: str, n_choices: int, choices: list[str] | None = None) -> tuple[str | None, str]:
    """(letter, how) with ``how`` in "answer", "answer_is", "last_line", "parenthesis" or "none"."""
    valid = LETTERS[:n_choices]
    tail = text[-_TAIL_CHARS:]
    strong: list[tuple[int, str]] = [(m.start(), m.group(1)) for rx in (_ANSWER_COLON, _BOXED)
                                     for m in rx.finditer(tail) if m.group(1) in valid]
    if choices:
        by_text = {_normal(c): LETTERS[i] for i, c in enumerate(choices)}
        strong += [(m.start(), by_text[_normal(m.group(1))]) for m in _BOXED_ANY.finditer(tail)
                   if _normal(m.group(1)) in by_text]
    if strong:
        return max(strong)[1], "answer"
    found = [m.group(1) for m in _ANSWER_IS.finditer(tail) if m.group(1) in valid]
    if found:
        return found[-1], "answer_is"
    lines = [line for line in tail.splitlines() if line.strip()]
    if lines:
        m = _LONE_LINE.match(lines[-1])
        if m and m.group(1) in valid:
            return m.group(1), "last_line"
    found = [m.group(1) for m in _PAREN.finditer(tail) if m.group(1) in valid]
    if found:
        return found[-1], "parenthesis"
    return None, "none"


def choice_reward(completion: str, answer: str, choices: list[str], correct: float = 1.0, wrong: float = 0.0,
                  no_answer: float = 0.0) -> RewardResult:
    """``correct`` when the chosen letter is ``answer``, ``wrong`` for another letter, ``no_answer`` when none
    is found (format_ok False)."""
    letter, _ = extract_choice(completion, len(choices), choices)
    if letter is None:
        return RewardResult(no_answer, correct=False, format_ok=False)
    ok = letter == answer
    return RewardResult(correct if ok else wrong, correct=ok, format_ok=True)
