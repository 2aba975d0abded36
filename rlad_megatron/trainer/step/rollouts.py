"""The rollout phase of a step: generate G responses per prompt on the engine rank, score them, share them with the
rest of the model-parallel group, and turn them into the learner's ``SequenceBatch``."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import torch

from rlad_megatron.data.rows import TEACHER_PASS_RATE
from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
from rlad_megatron.loss import equal_reward_groups, group_advantages
from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.trainer.step.truncation import TruncationPolicy, shape_rewards


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
    weight_versions: list[int] = dataclasses.field(default_factory=list)
    """The engine's weight version that sampled each response (all equal within one engine request)."""
    teacher_pass_rates: list[float] = dataclasses.field(default_factory=list)
    """Each response's prompt's ``teacher_pass_rate`` record field (NaN where the record has none; empty for
    batches saved before it was carried): the input of ``loss.teacher_trust``."""
    teachers: list[int] = dataclasses.field(default_factory=list)
    """The index (in ``teacher.teachers``) of the teacher each response's prompt is routed to; empty with one
    teacher."""

    @property
    def weight_version(self) -> int:
        """The version that sampled this batch (the oldest, if they ever differ)."""
        return min(self.weight_versions) if self.weight_versions else 0


_RAGGED_FIELDS = {"prompt_ids": torch.int32, "response_ids": torch.int32, "response_logprobs": torch.float64}
_FLAT_FIELDS = {"truncated": torch.bool, "rewards": torch.float64, "correct": torch.bool, "format_ok": torch.bool,
                "weight_versions": torch.int64, "teacher_pass_rates": torch.float64, "teachers": torch.int64}
#: Per-response fields a checkpoint written before they existed lacks (they unpack as empty lists).
_OPTIONAL_FIELDS = ("teacher_pass_rates", "teachers")


def pack_rollouts(rollouts: Rollouts) -> dict[str, Any]:
    """``rollouts`` as tensors (ragged lists flattened with their lengths) and two ints: what a checkpoint stores
    of a batch generated ahead (trainer/state.py writes tensor leaves to safetensors; at 512 samples of 30K tokens
    that is ~190 MB instead of ~430 MB of JSON). Token ids fit int32; float64 keeps every log-prob exact:
    :func:`unpack_rollouts` gives back the identical lists."""
    packed: dict[str, Any] = {"reward_errors": int(rollouts.reward_errors), "group_size": int(rollouts.group_size)}
    for name, dtype in _RAGGED_FIELDS.items():
        rows = getattr(rollouts, name)
        packed[name] = {"values": torch.tensor([x for row in rows for x in row], dtype=dtype),
                        "lengths": torch.tensor([len(row) for row in rows], dtype=torch.int64)}
    for name, dtype in _FLAT_FIELDS.items():
        packed[name] = torch.tensor(getattr(rollouts, name), dtype=dtype)
    return packed


def unpack_rollouts(packed: dict[str, Any]) -> Rollouts:
    """The inverse of :func:`pack_rollouts` (also reads the plain lists of checkpoints written before it)."""
    if not isinstance(packed["prompt_ids"], dict):
        return Rollouts(**packed)
    fields: dict[str, Any] = {"reward_errors": int(packed["reward_errors"]), "group_size": int(packed["group_size"])}
    for name in _RAGGED_FIELDS:
        values, lengths = packed[name]["values"].tolist(), packed[name]["lengths"].tolist()
        rows, start = [], 0
        for length in lengths:
            rows.append(values[start:start + length])
            start += length
        if start != len(values):
            raise ValueError(f"unpack_rollouts: {name} has {len(values)} values but its lengths sum to {start}")
        fields[name] = rows
    for name in _FLAT_FIELDS:
        if name in packed or name not in _OPTIONAL_FIELDS:
            fields[name] = packed[name].tolist()
    return Rollouts(**fields)


#: ``record -> teacher index``: the teacher a prompt is routed to (``rlad_megatron.teacher.routing``).
Route = Callable[[Mapping[str, Any]], int]


def generate_and_score(engine, guard, examples: Sequence[Any], sampling: SamplingSettings,
                       route: Route | None = None) -> Rollouts | None:
    """On an engine rank: sample ``sampling.n`` responses per prompt and score them with the guarded reward.

    ``guard`` None: this rank holds one shard of a tensor-parallel engine but does not lead its group; it takes
    part in the generation (the shards compute together) and returns None (the leader's rollouts are shared)."""
    results = engine.generate([ex.prompt_token_ids for ex in examples], sampling)
    if guard is None:
        return None
    return score_results(guard, examples, results, sampling.n, engine.weight_version, route)


def _pass_rate(record: Mapping[str, Any]) -> float:
    value = record.get(TEACHER_PASS_RATE)
    return math.nan if value is None else float(value)


def score_results(guard, examples: Sequence[Any], results, group_size: int, weight_version: int,
                  route: Route | None = None) -> Rollouts:
    """Score the engine's ``results`` for ``examples`` with the guarded reward; every sample records
    ``weight_version`` (the engine's weights that sampled it), its prompt's teacher pass rate and, with several
    teachers (``route``), the teacher its prompt is routed to."""
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
        group_size=group_size, weight_versions=[int(weight_version)] * len(response_ids),
        teacher_pass_rates=[_pass_rate(r) for r in records],
        teachers=[] if route is None else [int(route(r)) for r in records],
    )


def to_sequence_batch(rollouts: Rollouts, *, pad_id: int, skip_uniform_groups: bool,
                      only_correct: bool = False, truncation: TruncationPolicy | None = None,
                      pass_rates: bool = False) -> tuple[SequenceBatch, dict[str, float]]:
    """Pack the rollouts, apply the truncation policy, compute GRPO advantages and drop what carries no signal.

    ``truncation`` (``rollout.truncated`` and the overlong penalty; None: verifier rewards as they are) decides
    what cut-off responses earn and whether they stay in the loss. Groups whose rewards are all equal get a zero
    loss mask when ``skip_uniform_groups`` (DAPO dynamic sampling; the batch keeps its shape so that micro-batches
    stay equal in size). ``only_correct`` (offline distillation) keeps just the responses the verifier accepted.
    ``pass_rates``: the batch carries each response's teacher pass rate (``loss.teacher_trust``; the run's checks
    made sure every training record has one). The batch carries the routed teacher of each response when the
    rollouts have one (several teachers).
    """
    g = rollouts.group_size
    lengths = torch.tensor([len(r) for r in rollouts.response_ids], dtype=torch.float32)
    truncated = torch.tensor(rollouts.truncated, dtype=torch.bool)
    verdict = torch.tensor(rollouts.correct, dtype=torch.bool)
    shaped = shape_rewards(torch.tensor(rollouts.rewards, dtype=torch.float32), verdict, truncated, lengths,
                           truncation or TruncationPolicy(mode="reward", max_new_tokens=max(1, int(lengths.max()))))
    rewards, correct, valid = shaped.rewards, shaped.correct, shaped.valid
    advantages = group_advantages(rewards, g, valid=None if bool(valid.all()) else valid).reshape(-1)
    tokens, mask, engine_lps = pack_sequences(
        rollouts.prompt_ids, rollouts.response_ids, rollouts.response_logprobs, pad_id=pad_id
    )
    # A group is uniform when its valid responses (all of them, unless masked) share one reward.
    uniform_rows = equal_reward_groups(rewards, g, valid=valid)
    uniform = uniform_rows.reshape(-1, g)[:, 0]
    keep = valid.clone()
    if skip_uniform_groups:
        keep &= ~uniform_rows
    if only_correct:
        keep = correct.clone()
    mask &= keep.unsqueeze(1)
    n_trunc = int(truncated.sum())
    stats = {
        "reward/mean": float(rewards.mean()),
        "reward/accuracy": float(correct.float().mean()),
        "reward/format_ok": float(torch.tensor(rollouts.format_ok, dtype=torch.float32).mean()),
        "reward/errors": float(rollouts.reward_errors),
        "response/length_mean": float(lengths.mean()),
        "rollout/generated_tokens": float(lengths.sum()),  # up to and including the first eos
        "rollout/sequence_tokens": float(sum(len(p) for p in rollouts.prompt_ids) + lengths.sum()),  # + prompts
        "response/length_max": float(lengths.max()),
        "response/truncated_fraction": float(truncated.float().mean()),
        # Cut-off responses the verifier itself accepted: what rollout.truncated=reward would have credited.
        "response/truncated_verifier_correct": float((verdict & truncated).sum()) / max(1, n_trunc),
        "reward/overlong_penalty_mean": float(shaped.penalties.mean()),
        "groups/uniform_fraction": float(uniform.float().mean()),
        "groups/kept_sequences": float(keep.sum()),
    }
    seq_lengths = torch.tensor([len(p) + len(r) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)],
                               dtype=torch.long)
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=advantages, rewards=rewards, correct=correct,
                          engine_logprobs=engine_lps, lengths=seq_lengths)
    if pass_rates:
        rates = torch.tensor(rollouts.teacher_pass_rates, dtype=torch.float64)
        if rates.shape != (len(batch),) or bool(rates.isnan().any()):
            raise ValueError("loss.teacher_trust: a response's prompt has no teacher_pass_rate (the run's data "
                             "checks should have refused it): run `rlad-megatron teacher-trust` on the training data")
        batch.teacher_pass_rate = rates
    if rollouts.teachers:
        batch.teacher_index = torch.tensor(rollouts.teachers, dtype=torch.long)
    return batch, stats
