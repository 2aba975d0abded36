"""The custom_reward example's reward: partial credit for additions (a reward defined outside rlad_megatron).

run.yaml names it ``data.task: digits_reward.py:digit_reward``; the trainer imports this file by its path (relative
to run.yaml) in every rank and in the reward's worker processes, where it runs under ``rollout.reward_timeout_s``
(an exception, a NaN or a timeout gives reward 0 and counts in ``reward/errors``). A reward that cannot hang may set
``digit_reward.may_hang = False`` to run inline instead.
"""
import re

_FINAL = re.compile(r"####\s*(\d{1,64})")


def digit_reward(completion: str, answer: str, record: dict) -> float:
    """1.0 for the right sum after the last ``####``; a formatted but wrong sum earns 0.1 plus up to 0.4 for the
    digits it has in the right places (counted from the right); no ``#### N`` line earns 0.

    ``answer`` is the record's answer (here ``solution.value`` of each row, mapped by ``data.fields``); ``record``
    holds the row's other columns (e.g. ``record["level"]``). A result of at least 1.0 counts as correct
    (``data.task_options.correct_at``).
    """
    found = _FINAL.findall(completion)
    if not found:
        return 0.0
    got = found[-1].lstrip("0") or "0"
    want = answer.strip().lstrip("0") or "0"
    if got == want:
        return 1.0
    width = max(len(got), len(want))
    same = sum(a == b for a, b in zip(got.rjust(width), want.rjust(width)))
    return 0.1 + 0.4 * same / width

