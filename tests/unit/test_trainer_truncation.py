"""Truncated responses (issue 20): rollout.truncated = zero | mask | reward, DAPO's soft overlong penalty, the math
answer fallbacks off in training, and the step metrics, through the real math reward and ``to_sequence_batch``."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.config import ConfigError, load_run_config
from rlad_megatron.tasks.registry import get_task, get_training_task
from rlad_megatron.loss import group_advantages
from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.engine_api import Completion, PromptResult, SamplingSettings
from rlad_megatron.trainer.step.rollouts import generate_and_score, to_sequence_batch
from rlad_megatron.trainer.step.truncation import TruncationPolicy, overlong_penalty, shape_rewards

# Cut off at the token budget in the middle of a thinking trace: neither has a \boxed{} answer.
CUT_COUNTING = "<think>\nLet me count the apples: 1, 2, 3, 4, 5"
CUT_WAIT = "<think>\nThe answer is 5. Wait, let me check that again by"
FINISHED_RIGHT = "<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}."
FINISHED_WRONG = "<think>\n2 + 3 = 6\n</think>\nThe answer is \\boxed{6}."


class _Example:
    def __init__(self, record):
        self.record = record
        self.prompt_token_ids = [1, 7, 8]


class _ScriptedEngine:
    """Returns the given (text, truncated) completions for every prompt; one token per character."""

    weight_version = 0

    def __init__(self, completions):
        self.completions = completions

    def generate(self, prompts, sampling):
        out = []
        for p in prompts:
            comps = [Completion([10] * len(text), [-0.5] * len(text), "length" if cut else "stop", text)
                     for text, cut in self.completions]
            out.append(PromptResult(list(p), comps))
        return out


RECORD = {"id": "q1", "prompt": "How many apples are 2 + 3 apples?", "answer": "5", "answers": ["5"]}
SCRIPT = [(CUT_COUNTING, True), (CUT_WAIT, True), (FINISHED_RIGHT, False), (FINISHED_WRONG, False)]


def _rollouts(task):
    guard = RewardGuard(task.reward, backend="inline")
    try:
        return generate_and_score(_ScriptedEngine(SCRIPT), guard, [_Example(RECORD)],
                                  SamplingSettings(n=len(SCRIPT), max_tokens=64))
    finally:
        guard.close()


def _policy(mode, **kw):
    return TruncationPolicy(mode=mode, max_new_tokens=64, **kw)


def test_math_fallbacks_credit_cut_off_texts_unless_turned_off():
    # The eval default keeps the fallbacks: both cut-off texts "answer" 5.
    assert get_task("math").reward(CUT_COUNTING, RECORD).correct
    assert get_task("math").reward(CUT_WAIT, RECORD).correct
    # Training starts from the task's training options: fallbacks off, only the \boxed{} answer counts.
    train = get_training_task("math")
    assert train.reward(CUT_COUNTING, RECORD).score == 0.0 and not train.reward(CUT_COUNTING, RECORD).correct
    assert train.reward(CUT_WAIT, RECORD).score == 0.0
    assert train.reward(FINISHED_RIGHT, RECORD).correct
    # data.task_options override the training defaults.
    assert get_training_task("math", {"fallbacks": True}).reward(CUT_WAIT, RECORD).correct
    with pytest.raises(ValueError, match=r"data.task_options.*'math'"):
        get_training_task("math", {"no_such_option": 1})


def test_zero_never_credits_a_cut_off_answer_even_with_fallbacks_on():
    rollouts = _rollouts(get_training_task("math", {"fallbacks": True}))
    assert rollouts.rewards == [1.0, 1.0, 1.0, 0.0] and rollouts.truncated == [True, True, False, False]
    batch, stats = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=True, truncation=_policy("zero"))
    assert batch.rewards.tolist() == [0.0, 0.0, 1.0, 0.0]
    assert batch.correct.tolist() == [False, False, True, False]
    assert batch.advantages[2] > 0 > batch.advantages[0]  # the finished right answer is the only one pushed up
    assert stats["response/truncated_fraction"] == 0.5
    assert stats["response/truncated_verifier_correct"] == 1.0
    assert stats["reward/accuracy"] == 0.25


def test_reward_mode_is_the_old_behaviour():
    rollouts = _rollouts(get_training_task("math", {"fallbacks": True}))
    batch, _ = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=True, truncation=_policy("reward"))
    assert batch.rewards.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert batch.advantages[0] > 0  # a cut-off text is reinforced: what the default must prevent


def test_mask_drops_truncated_from_loss_and_group_statistics():
    rollouts = _rollouts(get_training_task("math", {"fallbacks": True}))
    batch, stats = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=True, truncation=_policy("mask"))
    per_row = batch.loss_mask.sum(dim=1).tolist()
    assert per_row[0] == per_row[1] == 0
    assert per_row[2] == len(FINISHED_RIGHT) and per_row[3] == len(FINISHED_WRONG)
    # Group statistics over the two finished responses only: rewards 1 and 0 -> advantages +1 and -1.
    assert torch.allclose(batch.advantages[2:], torch.tensor([1.0, -1.0]), atol=1e-5)
    assert batch.advantages[:2].tolist() == [0.0, 0.0]
    assert stats["groups/kept_sequences"] == 2


def test_mask_with_every_valid_reward_equal_is_a_uniform_group():
    rollouts = _rollouts(get_training_task("math", {"fallbacks": True}))
    rollouts.rewards[3] = 1.0  # both finished responses right: the group says nothing
    batch, stats = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=True, truncation=_policy("mask"))
    assert not batch.loss_mask.any() and stats["groups/uniform_fraction"] == 1.0


def test_overlong_penalty_matches_dapo_formula():
    lengths = torch.arange(0, 70)
    got = overlong_penalty(lengths, max_new_tokens=64, cache=16, factor=0.5)
    for n, value in zip(lengths.tolist(), got.tolist()):
        if n <= 48:
            expected = 0.0
        elif n <= 64:
            expected = (48 - n) / 16 * 0.5
        else:
            expected = -0.5
        assert value == pytest.approx(expected), n
    assert overlong_penalty(lengths, 64, 0).abs().sum() == 0


def test_penalty_adds_to_the_mode():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    shaped = shape_rewards(rewards, torch.tensor([True, True, True]), torch.tensor([False, False, True]),
                           torch.tensor([10, 56, 64]), _policy("reward", overlong_cache=16))
    assert shaped.rewards.tolist() == pytest.approx([1.0, 0.5, 0.0])
    shaped = shape_rewards(rewards, torch.tensor([True] * 3), torch.tensor([False, False, True]),
                           torch.tensor([10, 56, 64]), _policy("zero", overlong_cache=16))
    assert shaped.rewards.tolist() == pytest.approx([1.0, 0.5, -1.0])
    # zero keeps a task's penalty (K&K: format -1 + unparsable -2) instead of lifting it to 0
    shaped = shape_rewards(torch.tensor([-3.0]), torch.tensor([False]), torch.tensor([True]), torch.tensor([64]),
                           _policy("zero"))
    assert shaped.rewards.tolist() == [-3.0]


@pytest.mark.parametrize("normalize", [True, False])
def test_group_advantages_over_valid_members_match_plain_python(normalize):
    rewards = [0.0, 1.0, 3.0, -2.0, 5.0, 5.0, 1.0, 0.0]
    valid = [True, False, True, True, False, False, True, True]
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4, normalize_std=normalize,
                           valid=torch.tensor(valid))
    for g in range(2):
        members = [rewards[i] for i in range(4 * g, 4 * g + 4) if valid[i]]
        mean = sum(members) / len(members)
        std = (sum((r - mean) ** 2 for r in members) / len(members)) ** 0.5
        for i in range(4 * g, 4 * g + 4):
            expected = 0.0 if not valid[i] else (rewards[i] - mean) / ((std + 1e-6) if normalize else 1.0)
            assert got[i].item() == pytest.approx(expected, abs=1e-9)


def test_config_fields(tmp_path):
    base = ["model.student=s", "model.teacher=t", "data.train_files=[a.jsonl]"]
    c = load_run_config(None, base)
    assert c.rollout.truncated == "zero" and c.rollout.overlong_cache == 0 and c.trainer.export_dtype is None
    c = load_run_config(None, base + ["rollout.truncated=mask", "rollout.overlong_cache=16",
                                      "data.task_options.fallbacks=true", "data.chat_template_kwargs.enable_thinking=false",
                                      "trainer.export_dtype=bfloat16"])
    assert c.rollout.truncated == "mask" and c.rollout.overlong_cache == 16
    assert c.data.task_options == {"fallbacks": True}
    assert c.data.chat_template_kwargs == {"enable_thinking": False}
    assert c.trainer.export_dtype == "bfloat16"
    off = load_run_config(None, base + ["data.task_options.fallbacks=false", "data.task_options.correct=2"])
    assert off.data.task_options == {"fallbacks": False, "correct": 2}  # parsed values, never the text "false"
    for bad, key in (("rollout.truncated=drop", "rollout.truncated"), ("rollout.overlong_cache=65", "overlong_cache"),
                     ("rollout.overlong_penalty=-1", "overlong_penalty"), ("trainer.export_dtype=fp16", "export_dtype"),
                     ("data.task_options=3", "data.task_options")):
        with pytest.raises(ConfigError, match=key):
            load_run_config(None, base + [bad])
