"""The rollout phase of a step: generate G responses per prompt on the engine rank, score them, share them with the
rest of the model-parallel group, and turn them into the learner's ``SequenceBatch``."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch

from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
from rlad_megatron.loss import group_advantages
from rlad_megatron.rollout.base import SamplingSettings


@dataclasses.dataclass
class Rollouts:
    """One step's samples on this data-parallel rank: ``len(prompts) * group_size`` responses, group-major."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    response_logprobs: list[list[float]]
    truncated: list[bool]
    rewards: list[float]
    correct: list[bool]
    format_ok: list[bool]
    reward_errors: int
    group_size: int


def generate_and_score(engine, guard, task, examples: Sequence[Any], sampling: SamplingSettings) -> Rollouts:
    """On the engine rank: sample ``sampling.n`` responses per prompt and score them with the guarded reward."""
    results = engine.generate([ex.prompt_token_ids for ex in examples], sampling)
    prompt_ids, response_ids, logprobs, truncated, texts, records = [], [], [], [], [], []
    for ex, result in zip(examples, results):
        for completion in result.completions:
            prompt_ids.append(list(ex.prompt_token_ids))
            response_ids.append(list(completion.token_ids))
            logprobs.append(list(completion.logprobs))
            truncated.append(completion.truncated)
            texts.append(completion.text)
            records.append(ex.record)
    errors_before = guard.stats.errors + guard.stats.timeouts
    scored = guard.score_many(zip(texts, records))
    errors_after = guard.stats.errors + guard.stats.timeouts
    return Rollouts(
        prompt_ids=prompt_ids, response_ids=response_ids, response_logprobs=logprobs, truncated=truncated,
        rewards=[float(s.score) for s in scored], correct=[bool(s.correct) for s in scored],
        format_ok=[bool(s.format_ok) for s in scored], reward_errors=errors_after - errors_before,
        group_size=sampling.n,
    )


def to_sequence_batch(rollouts: Rollouts, *, pad_id: int, skip_uniform_groups: bool,
                      only_correct: bool = False) -> tuple[SequenceBatch, dict[str, float]]:
    """Pack the rollouts, compute GRPO advantages and drop what carries no signal.

    Groups whose rewards are all equal get a zero loss mask when ``skip_uniform_groups`` (DAPO dynamic sampling;
    the batch keeps its shape so that micro-batches stay equal in size). ``only_correct`` (offline distillation)
    keeps just the responses the verifier accepted.
    """
    g = rollouts.group_size
    rewards = torch.tensor(rollouts.rewards, dtype=torch.float32)
    advantages = group_advantages(rewards, g).reshape(-1)
    tokens, mask, engine_lps = pack_sequences(
        rollouts.prompt_ids, rollouts.response_ids, rollouts.response_logprobs, pad_id=pad_id
    )
    grouped = rewards.reshape(-1, g)
    uniform = (grouped.max(dim=1).values == grouped.min(dim=1).values)
    keep = torch.ones(len(rewards), dtype=torch.bool)
    if skip_uniform_groups:
        keep &= ~uniform.repeat_interleave(g)
    correct = torch.tensor(rollouts.correct, dtype=torch.bool)
    if only_correct:
        keep = correct.clone()
    mask &= keep.unsqueeze(1)
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float32)
    stats = {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float(correct.float().mean()),
        "reward/format_ok": float(torch.tensor(rollouts.format_ok, dtype=torch.float32).mean()),
        "reward/errors": float(rollouts.reward_errors),
        "response/length_mean": float(lengths.mean()),
        "rollout/generated_tokens": float(lengths.sum()),  # up to and including the first eos
        "response/length_max": float(lengths.max()),
        "response/truncated_fraction": float(torch.tensor(rollouts.truncated, dtype=torch.float32).mean()),
        "groups/uniform_fraction": float(uniform.float().mean()),
        "groups/kept_sequences": float(keep.sum()),
    }
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=advantages, rewards=rewards, correct=correct,
                          engine_logprobs=engine_lps)
    return batch, stats
