"""Settings that would make a plan fit: the largest token budget per recomputation, a smaller KV cache, engine sleep
or teacher offload (memory off the GPU between phases), more TP.

Written against a ``fits(config, dp)`` question that the plan passes in (:func:`rlad_megatron.memory_plan.plan_memory`
with the same model shapes and GPU), so that this module knows the settings, not how a plan is made.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from rlad_megatron.config import RunConfig

Fits = Callable[[RunConfig, int], bool]
"""``fits(config, dp)``: whether ``config`` with ``dp`` data-parallel replicas fits the GPU (False when it cannot
be planned)."""


def _with(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    out = config
    for name, changes in sections.items():
        out = dataclasses.replace(out, **{name: dataclasses.replace(getattr(out, name), **changes)})
    return out


def largest_budget(config: RunConfig, dp: int, fits: Fits, recompute: str) -> int | None:
    """The largest training token budget (a multiple of 1024, at least one longest sequence) that fits with
    ``recompute``, or None."""
    longest = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    low = -(-longest // 1024) * 1024

    def ok(budget: int) -> bool:
        return fits(_with(config, parallel={"recompute": recompute},
                          trainer={"max_tokens_per_micro_batch": budget, "max_tokens_per_forward_micro_batch": None}),
                    dp)

    if not ok(low):
        return None
    high = low
    while high < (1 << 22) and ok(high * 2):
        high *= 2
    lo, hi = high, high * 2
    while hi - lo > 1024:
        mid = (lo + hi) // 2 // 1024 * 1024
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def suggestions(config: RunConfig, dp: int, fits: Fits) -> list[str]:
    """Single changes that make the plan fit, the least invasive first."""
    out: list[str] = []
    par, t = config.parallel, config.trainer
    order = ("none", "selective", "full")
    best = 0
    for recompute in order[order.index(par.recompute):]:  # never suggest less recomputation than configured
        budget = largest_budget(config, dp, fits, recompute)
        if budget is None or budget <= best:  # e.g. selective with fused attention: nothing gained
            continue
        best = budget
        change = f"trainer.max_tokens_per_micro_batch={budget}"
        if recompute != par.recompute:
            change = f"parallel.recompute={recompute} with {change}"
        if t.max_tokens_per_micro_batch is None or budget < t.max_tokens_per_micro_batch or recompute != par.recompute:
            out.append(change)
    kv = config.rollout.kv_cache_mb
    for fraction in (0.75, 0.5, 0.25):
        smaller = int(kv * fraction)
        if config.rollout.placement == "colocated" and fits(_with(config, rollout={"kv_cache_mb": smaller}), dp):
            out.append(f"rollout.kv_cache_mb={smaller}")
            break
    # issue 21's phase moves: the engine asleep outside generation, the frozen teacher in host memory between passes
    if config.rollout.placement == "colocated" and not config.rollout.sleep_level \
            and fits(_with(config, rollout={"sleep_level": 1}), dp):
        out.append("rollout.sleep_level=1")
    if not config.teacher.offload and fits(_with(config, teacher={"offload": True}), dp):
        out.append("teacher.offload=true")
    tp = par.tensor_parallel
    for factor in (2, 4):
        bigger = tp * factor
        if bigger > 8 or dp % factor:  # TP stays inside a node; the same GPUs hold dp / factor replicas
            continue
        if fits(_with(config, parallel={"tensor_parallel": bigger, "sequence_parallel": True}), dp // factor):
            out.append(f"parallel.tensor_parallel={bigger} parallel.sequence_parallel=true (fewer DP replicas)")
            break
    return out
