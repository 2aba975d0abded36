"""Evaluate a rollout engine on a task: sample k responses per prompt, score them, aggregate Mean@k / Pass@k.

Written against :class:`rlad_megatron.engine_api.RolloutEngine`, so that the real vLLM engine and test fakes are
interchangeable. Rewards run through :class:`rlad_megatron.rewards.guard.RewardGuard`: a reward that raises or times
out counts as wrong (reward 0) and is reported, never stopping the evaluation.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any, Mapping, Sequence

from rlad_megatron.data.prompt_dataset import PromptExample
from rlad_megatron.tasks.base import Task
from rlad_megatron.eval.metrics import mean_at_k, pass_at_k
from rlad_megatron.eval.report import EvalReport, EvalRow
from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.engine_api import RolloutEngine, SamplingSettings
from rlad_megatron.models.stop_tokens import stop_token_ids

#: The paper's decoding settings for evaluation.
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.95


def default_sampling(k: int, tokenizer: Any, max_tokens: int = 512, seed: int | None = 0,
                     chat_template_kwargs: Mapping[str, Any] | None = None) -> SamplingSettings:
    """k samples per prompt at temperature 0.6 / top-p 0.95, stopping at the tokenizer's eos and the chat
    template's end of turn (:func:`rlad_megatron.models.stop_tokens.stop_token_ids`)."""
    return SamplingSettings(n=k, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, max_tokens=max_tokens,
                            stop_token_ids=stop_token_ids(tokenizer, (), chat_template_kwargs), seed=seed)


def _aggregate(items: list[dict[str, Any]], ks: list[int]) -> EvalRow:
    n_samples = sum(it["n"] for it in items)
    return EvalRow(
        prompts=len(items),
        samples=n_samples,
        mean_at_k=sum(it["mean"] for it in items) / len(items),
        pass_at={j: sum(pass_at_k(it["n"], it["correct"], j) for it in items) / len(items) for j in ks},
        mean_reward=sum(it["reward_sum"] for it in items) / n_samples,
        format_rate=sum(it["format"] for it in items) / n_samples,
        truncated_rate=sum(it["truncated"] for it in items) / n_samples,
        mean_response_tokens=sum(it["tokens"] for it in items) / n_samples,
    )


def evaluate(engine: RolloutEngine, task: Task, records: Sequence[Mapping[str, Any] | PromptExample], tokenizer: Any,
             k: int, sampling: SamplingSettings | None = None, pass_ks: Sequence[int] | None = None,
             batch_size: int = 64, reward_timeout_s: float = 10.0, guard: RewardGuard | None = None,
             credit_truncated: bool = True,
             chat_template_kwargs: Mapping[str, Any] | None = None) -> EvalReport:
    """Sample ``sampling.n`` (default ``k``) responses per prompt and report Mean@n and Pass@j for j in ``pass_ks``
    (default ``{1, k}``), overall and per ``task.difficulty(record)``.

    records: task records (prompts are built with ``task.build_prompt``) or :class:`PromptExample` s (their token
    ids are used as they are). sampling: defaults to :func:`default_sampling` (temperature 0.6, top-p 0.95); its
    ``n`` is raised to ``k`` when smaller. ``credit_truncated=False``: a response cut off at ``max_tokens`` counts
    as wrong and earns ``min(reward, 0)`` (``rollout.truncated=zero``). ``chat_template_kwargs``: for prompts
    built here from records (e.g. ``{"enable_thinking": False}``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not records:
        raise ValueError("evaluate() needs at least one record")
    sampling = sampling or default_sampling(k, tokenizer, chat_template_kwargs=chat_template_kwargs)
    if sampling.n < k:
        sampling = dataclasses.replace(sampling, n=k)
    ks = sorted(set(pass_ks or (1, k)))
    if ks[0] < 1 or ks[-1] > sampling.n:
        raise ValueError(f"pass_ks must lie in 1..{sampling.n} (samples per prompt), got {ks}")
    own_guard = guard is None
    guard = guard or RewardGuard(task.reward, timeout_s=reward_timeout_s)
    items: list[dict[str, Any]] = []
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            recs, prompts = [], []
            for r in chunk:
                if isinstance(r, PromptExample):
                    recs.append(r.record)
                    prompts.append(r.prompt_token_ids)
                else:
                    recs.append(dict(r))
                    prompts.append(task.encode_prompt(task.build_prompt(r, tokenizer, chat_template_kwargs),
                                                      tokenizer))
            results = engine.generate(prompts, sampling)
            if len(results) != len(prompts):
                raise RuntimeError(f"engine returned {len(results)} results for {len(prompts)} prompts")
            for rec, res in zip(recs, results):
                texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in res.completions]
                scored = guard.score_many([(t, rec) for t in texts])
                credited = [credit_truncated or not c.truncated for c in res.completions]
                correct = [s.correct and ok for s, ok in zip(scored, credited)]
                items.append({
                    "id": rec["id"], "difficulty": task.difficulty(rec), "n": len(correct),
                    "correct": sum(correct), "mean": mean_at_k(correct),
                    "reward_sum": sum(s.score if ok else min(s.score, 0.0) for s, ok in zip(scored, credited)), "format": sum(s.format_ok for s in scored),
                    "truncated": sum(c.truncated for c in res.completions),
                    "tokens": sum(len(c.token_ids) for c in res.completions),
                })
        if any(it["n"] < ks[-1] for it in items):
            raise RuntimeError(f"engine returned fewer than {ks[-1]} samples for some prompt")
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for it in items:
            groups[it["difficulty"]].append(it)
        return EvalReport(
            task=task.name, k=k, samples_per_prompt=sampling.n, sampling=dataclasses.asdict(sampling),
            overall=_aggregate(items, ks), by_difficulty={d: _aggregate(g, ks) for d, g in groups.items()},
            reward_stats=guard.stats.as_metrics(),
            per_prompt=[{key: it[key] for key in ("id", "difficulty", "n", "correct")} for it in items],
        )
    finally:
        if own_guard:
            guard.close()
