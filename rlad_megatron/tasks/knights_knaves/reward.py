"""Logic-RL style answer parser and reward for Knights and Knaves.

Expected completion::

    <think> ... reasoning ... </think>
    <answer> (1) Zoey is a knight
    (2) Oliver is a knave </answer>

Reward = format part + answer part (Logic-RL, Xie et al. 2025; values configurable in :class:`KKRewardConfig`):
- format: ``format_ok`` (+1) when the tags appear exactly once each and in order, else ``format_bad`` (-1);
- answer (only when the format is right): ``correct`` (+2) when every inhabitant's role is stated exactly once and
  right, ``wrong`` (-1.5) when it parses but is wrong, ``unparsable`` (-2) when some inhabitant's role is missing or
  stated twice; a completion with a bad format gets ``unparsable`` as its answer part.

All parsing is linear-time regex over at most ``max_answer_chars`` characters, so adversarial outputs are cheap.
"""
from __future__ import annotations

import dataclasses
import re

from rlad_megatron.rewards.base import RewardResult

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclasses.dataclass(frozen=True)
class KKRewardConfig:
    """Reward values and parsing options (defaults: Logic-RL)."""

    format_ok: float = 1.0
    format_bad: float = -1.0
    correct: float = 2.0
    wrong: float = -1.5
    unparsable: float = -2.0
    #: When False, ``<think>`` may be missing (prompts that pre-fill it); ``</think>`` is still required.
    require_think_open: bool = True
    #: Answer blocks longer than this are unparsable (bounds the work per sample).
    max_answer_chars: int = 8192


def check_format(text: str, cfg: KKRewardConfig = KKRewardConfig()) -> bool:
    """Each tag exactly once (``<think>`` optional when configured) and in think -> answer order."""
    counts = {t: text.count(t) for t in _TAGS}
    if counts["</think>"] != 1 or counts["<answer>"] != 1 or counts["</answer>"] != 1:
        return False
    if counts["<think>"] != 1 and (cfg.require_think_open or counts["<think>"] != 0):
        return False
    pos = [text.find(t) for t in _TAGS]
    if counts["<think>"] == 0:
        pos[0] = -1
    return pos[0] < pos[1] < pos[2] < pos[3]


def extract_answer_block(text: str) -> str | None:
    """The text inside the last ``<answer>...</answer>`` pair, or None (unterminated tags give None)."""
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>"):end]


def parse_roles(answer: str, names: list[str], max_chars: int = 8192) -> list[bool] | None:
    """Each name's stated role (True = knight), or None when any name's role is missing or stated twice."""
    if len(answer) > max_chars:
        return None
    roles: list[bool] = []
    for name in names:
        found = re.findall(r"\b" + re.escape(name) + r"\s+is\s+(?:a\s+)?(knight|knave)\b", answer, flags=re.IGNORECASE)
        if len(found) != 1:
            return None
        roles.append(found[0].lower() == "knight")
    return roles


def kk_reward(completion: str, names: list[str], solution: list[bool],
              cfg: KKRewardConfig = KKRewardConfig()) -> RewardResult:
    """The Logic-RL reward of one completion; ``correct`` means format right and every role right."""
    fmt = check_format(completion, cfg)
    block = extract_answer_block(completion) if fmt else None
    roles = parse_roles(block, names, cfg.max_answer_chars) if block is not None else None
    if roles is None:
        return RewardResult((cfg.format_ok if fmt else cfg.format_bad) + cfg.unparsable, False, fmt)
    ok = roles == list(solution)
    return RewardResult(cfg.format_ok + (cfg.correct if ok else cfg.wrong), ok, True)
