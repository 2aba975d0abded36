"""Final-answer extraction for math completions and the math-verify based reward.

Extraction order (the first that finds something wins):
1. the content of the last terminated ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled), or ``\\boxed 5``;
2. "the (final) answer is X" (the last such phrase);
3. "#### X" (GSM8K style);
4. the last number in the text.
Fallbacks look only at the last 4000 characters (where a final answer is).
Fallbacks 2-4 can be turned off (``MathRewardConfig.fallbacks``). Everything is a single linear pass, so 100k-char or
brace-bomb outputs cost milliseconds; answers longer than ``max_answer_chars`` are scored wrong without calling
math-verify (sympy on a 10^5-digit number or a deep tower can take minutes). The reward is meant to run under
:class:`rlad_megatron.rewards.guard.RewardGuard` (process backend), which bounds whatever time math-verify takes, in
any thread; math-verify's own ``signal.alarm`` timeouts (main thread only) are therefore disabled here.
"""
from __future__ import annotations

import dataclasses
import logging
import re

from rlad_megatron.rewards.base import RewardResult

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_SPACE = re.compile(r"\\boxed[ ]+([^\s$]{1,200})")
_ANSWER_IS = re.compile(r"(?:final answer|answer) is[:\s]*\$?([^\n$]{1,200}?)\$?\s*(?:\.\s|\.$|$|\n)",
                        re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]{1,200})")
_FALLBACK_TAIL_CHARS = 4000
_NUMBER = re.compile(r"-?\d[\d,]{0,200}(?:\.\d{1,200})?")


@dataclasses.dataclass(frozen=True)
class MathRewardConfig:
    """Reward values and extraction options."""

    correct: float = 1.0
    wrong: float = 0.0
    no_answer: float = 0.0
    #: Use "the answer is", "####" and last-number fallbacks when there is no \\boxed{}.
    fallbacks: bool = True
    #: Extracted answers longer than this are wrong without calling math-verify.
    max_answer_chars: int = 300


def extract_boxed(text: str) -> str | None:
    """Content of the last terminated ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; else ``\\boxed X``."""
    openers = {m.end() - 1: m.start() for m in _BOX_OPEN.finditer(text)}  # '{' position -> command start
    best: tuple[int, int, int] | None = None  # (command start, content start, content end)
    if openers:
        stack: list[int] = []
        for m in re.finditer(r"[{}]", text):
            if m.group() == "{":
                stack.append(m.start())
            elif stack:
                open_pos = stack.pop()
                if open_pos in openers and (best is None or openers[open_pos] > best[0]):
                    best = (openers[open_pos], open_pos + 1, m.start())
    if best is not None:
        return text[best[1]:best[2]].strip()
    spaced = _BOX_SPACE.findall(text)
    return spaced[-1] if spaced else None


def extract_final_answer(text: str, fallbacks: bool = True) -> tuple[str | None, str]:
    """(answer, how) where ``how`` is "boxed", "answer_is", "hashes", "last_number" or "none"."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    if not fallbacks:
        return None, "none"
    tail = text[-_FALLBACK_TAIL_CHARS:]  # a final answer sits at the end; bounds regex work on huge outputs
    for how, rx in (("answer_is", _ANSWER_IS), ("hashes", _HASHES)):
        found = rx.findall(tail)
        if found:
            return found[-1].strip().rstrip("."), how
    numbers = _NUMBER.findall(tail)
    if numbers:
        return numbers[-1].rstrip(","), "last_number"
    return None, "none"


def _normalize(s: str) -> str:
    s = s.strip().strip("$").replace(" ", "").replace("\\!", "").replace("{,}", "")
    s = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s.rstrip(".")


def answers_match(pred: str, gold: str) -> bool:
    """Whether ``pred`` equals ``gold``: string equality after light normalization, else math-verify."""
    if _normalize(pred) == _normalize(gold):
        return True
    from math_verify import parse, verify  # imported lazily: sympy/antlr are heavy

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # we bound time ourselves (see module docstring)
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def math_reward(completion: str, golds: list[str], cfg: MathRewardConfig = MathRewardConfig()) -> RewardResult:
    """Reward of one math completion against one or more acceptable gold answers.

    ``format_ok`` means a ``\\boxed{}`` answer was found; ``correct`` means the extracted answer (boxed or, when
    enabled, a fallback) matches any gold answer.
    """
    answer, how = extract_final_answer(completion, cfg.fallbacks)
    if answer is None or not answer:
        return RewardResult(cfg.no_answer, correct=False, format_ok=False)
    fmt = how == "boxed"
    if len(answer) > cfg.max_answer_chars:
        return RewardResult(cfg.wrong, correct=False, format_ok=fmt)
    ok = any(answers_match(answer, g) for g in golds)
    return RewardResult(cfg.correct if ok else cfg.wrong, correct=ok, format_ok=fmt)
