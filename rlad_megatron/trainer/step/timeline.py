"""The step's timeline by pool: how long the learner, the rollout engines and the teacher each computed in a step, and
how long each waited (the rest of the step).

    metrics.update(pool_timeline(step_s=2.0, generation_wait_s=0.01, rollout_busy_s=0.6, rollout_apart=True,
                                 teacher_wait_s=0.2, teacher_busy_s=0.9, teacher_apart=True))

A pool apart from the learner (a disaggregated engine, a teacher pool of its own) reports its own compute seconds
(measured where it computes); the learner's busy time is the step minus what it waited for those pools. A pool on the
learner's GPUs (a colocated engine, a colocated teacher) is busy for the seconds the learner spent on it, within the
learner's own busy time. Each pool's wait is the step minus its busy time, and ``<pool>_idle_frac`` their ratio: what
the three-pool plan (``rlad_megatron.memory_plan.pools``) predicts.

In async mode the rollout figure is the generation of the batch asked during this step (for the next one), and the
teacher figure the scoring of the batch trained on in this step: over steady steps both are the per-step averages.
"""
from __future__ import annotations


def pool_timeline(*, step_s: float, generation_wait_s: float, rollout_busy_s: float, rollout_apart: bool,
                  teacher_wait_s: float | None = None, teacher_busy_s: float | None = None,
                  teacher_apart: bool = False, teacher_asked_ahead: bool = False) -> dict[str, float]:
    """``timeline/<pool>_busy``, ``timeline/<pool>_wait`` (seconds) and ``timeline/<pool>_idle_frac`` for the
    learner, the rollout engines and (when the run scores with one) the teacher; with a teacher apart,
    ``timeline/teacher_asked_at_arrival``: 1 when the pool was asked for the batch as soon as its samples arrived
    (async mode: while the learner trained on the batch before)."""
    waits = (generation_wait_s if rollout_apart else 0.0) + ((teacher_wait_s or 0.0) if teacher_apart else 0.0)
    busy = {"learner": max(0.0, step_s - waits),
            "rollout": rollout_busy_s if rollout_apart else generation_wait_s}
    if teacher_wait_s is not None:
        busy["teacher"] = teacher_busy_s if teacher_apart and teacher_busy_s is not None else teacher_wait_s
    out: dict[str, float] = {}
    if teacher_apart:
        out["timeline/teacher_asked_at_arrival"] = float(teacher_asked_ahead)
    for pool, seconds in busy.items():
        seconds = min(max(0.0, seconds), step_s) if step_s > 0 else 0.0
        out[f"timeline/{pool}_busy"] = seconds
        out[f"timeline/{pool}_wait"] = step_s - seconds
        out[f"timeline/{pool}_idle_frac"] = (step_s - seconds) / step_s if step_s > 0 else 0.0
    return out
