"""Settings of the small-scale comparison (issue 9): per task, the data, the two tiny models and their supervised
preparation, the shared RL budget, and the evaluation. One place for every number the comparison uses.

The defaults are sized for a 2-core CPU machine (see ``docs/results.md`` for the measured wall times: about half an
hour for arithmetic, about an hour for compact Knights and Knaves plus its teacher's preparation).
``short_settings()`` is the test suite's version.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from examples.quickstart.settings import DataSettings, ModelSettings
from recipes.small import SmallRun

#: The four algorithms of the paper's comparison, in the order the table lists them.
COMPARED_ALGORITHMS: tuple[str, ...] = ("sft", "grpo", "kdrl", "rlad")
#: The alpha sweep (alpha = weight on the old student; 1.0 must reproduce grpo).
SWEEP_ALPHAS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
#: Rollout modes a comparison may run (recipes.small.SmallRun.rollout_mode); sync is the earlier results'.
ROLLOUT_MODES: tuple[str, ...] = ("sync", "async")
TASKS: tuple[str, ...] = ("arithmetic", "knights_knaves_compact", "knights_knaves", "carry_trap")
#: Arms beyond the four algorithms: ``<algorithm>+<variant>`` runs the algorithm with these extra ``loss.*`` settings
#: (issue 33's teacher signals). ``topk``: forward KL over the teacher's top-k with a tail bucket, a KDRL-style term
#: next to TRRD; ``gate``: the teacher off (plain GRPO for rlad) on prompts whose ``teacher_pass_rate`` (a teacher
#: pre-pass with the run's verifier, stored in the training file) is below 0.5.
ARM_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": {"topk_kl": "forward", "topk_k": 16, "topk_beta": 0.1},
    "gate": {"teacher_trust": "gate", "teacher_trust_threshold": 0.5},
}
#: Every arm the harness knows, in the table's order.
ARMS: tuple[str, ...] = COMPARED_ALGORITHMS + ("rlad+topk", "rlad+gate", "rlad+topk+gate", "kdrl+gate")


def split_arm(arm: str) -> tuple[str, str]:
    """``"rlad+gate"`` -> ``("rlad", "gate")``; ``"rlad+topk+gate"`` -> ``("rlad", "topk+gate")`` (both variants'
    settings); ``"grpo"`` -> ``("grpo", "")``. Unknown parts raise ValueError."""
    algorithm, _, variant = arm.partition("+")
    parts = variant.split("+") if variant else []
    if algorithm not in COMPARED_ALGORITHMS or any(v not in ARM_VARIANTS for v in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"unknown algorithm/arm {arm!r}; choose from {list(ARMS)} "
                         f"(<algorithm>[+{'|'.join(ARM_VARIANTS)}]...)")
    return algorithm, variant


def variant_loss(variant: str) -> dict[str, Any]:
    """The extra ``loss.*`` settings of a variant (``"topk+gate"``: both)."""
    out: dict[str, Any] = {}
    for part in variant.split("+") if variant else []:
        out.update(ARM_VARIANTS[part])
    return out


def rl_budget(**fields: Any) -> SmallRun:
    """What every algorithm of a task gets: the same rollouts per step, steps, optimiser and loss settings (all
    but the algorithm and alpha), as a :class:`recipes.small.SmallRun` with the comparison's defaults: 30 steps of
    8 prompts x G=8, two updates per batch (so that pi_old differs from the current policy and the clip acts),
    micro-batches of 32, lr 1e-4 without warm-up. Measured (docs/results.md): 3e-4 lowered the arithmetic
    student's accuracy within 30 steps for grpo and rlad alike; the quickstart's 1e-3 collapsed it."""
    defaults: dict[str, Any] = dict(steps=30, prompts_per_step=8, group_size=8, updates_per_batch=2,
                                    micro_batch_size=32, lr=1e-4, warmup_steps=0, max_new_tokens=48,
                                    max_prompt_tokens=32, kv_cache_mb=64, tensor_parallel=1, nproc=1)
    return SmallRun(**{**defaults, **fields})


@dataclass
class ComparisonEval:
    limit: int = 200
    """Test prompts evaluated per final student."""
    k: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_num_seqs: int | None = None
    """Engine batch cap for evaluation (None: the engine's default). Long prompts need it: see
    ``knights_knaves_settings``."""


@dataclass
class TaskSettings:
    """One task of the comparison: data, teacher, student warm start, RL budget, evaluation, threshold."""

    task: str
    data: DataSettings
    teacher: ModelSettings
    student: ModelSettings
    rl: SmallRun
    eval: ComparisonEval = field(default_factory=ComparisonEval)
    threshold_gain: float = 0.10
    """Steps-to-threshold: first step whose 5-step moving average of the rollouts' accuracy reaches the common
    start (mean step-1 accuracy of all runs of the task; they share the student) plus this gain."""
    kk_sizes: tuple[int, ...] = (2, 3, 4)
    """Knights and Knaves only: inhabitants per puzzle (train and test)."""
    max_position_embeddings: int = 512
    teacher_reference: str | None = None
    """carry_trap only: the teacher's supervised targets (``"flawed"``: the final carry dropped)."""
    rl_prompts: int | None = None
    """Training prompts the RL runs draw from (the first ones of the train split; None: all). The teacher
    pre-pass rates exactly these."""
    trust_k: int = 0
    """Teacher samples per RL training prompt for ``teacher_pass_rate`` (0: no pre-pass)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def arithmetic_settings() -> TaskSettings:
    """The demo task (additions with a chain of thought, 1..3 digits), the quickstart's model shapes."""
    data = DataSettings(n_train=4000, n_test=200, min_digits=1, max_digits=3, seed=0)
    teacher = ModelSettings(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                            init_seed=0, sft_steps=800, sft_batch_size=32, sft_lr=3e-3, sft_seed=0)
    student = ModelSettings(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2,
                            init_seed=1, sft_steps=400, sft_batch_size=32, sft_lr=3e-3, sft_seed=1)
    # 100 steps: at 30 the algorithms end within the seed-to-seed noise of each other (docs/results.md).
    return TaskSettings("arithmetic", data, teacher, student,
                        rl_budget(steps=100, max_new_tokens=47, max_prompt_tokens=32))


def knights_knaves_settings() -> TaskSettings:
    """Knights and Knaves with 2..4 inhabitants; the tiny models answer directly (the reference completion has
    an empty ``<think>``), so accuracy is mostly about getting the format and guessing better than chance.

    At most 4 sequences of ~850 prompt tokens may be in flight in the vLLM CPU engine: above 4096 tokens per
    scheduler step it splits a prefill into chunks, and a seeded request whose chunk is discarded crashes
    (``RuntimeError: CPU Generator does not use offset``, vLLM's ``_bookkeeping_sync``). Hence 1 prompt x G=4 per
    step in training and ``max_num_seqs=4`` in evaluation (see docs/results.md)."""
    data = DataSettings(n_train=1500, n_test=90, seed=0)  # per size: n_train / 3, n_test / 3
    teacher = ModelSettings(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                            init_seed=0, sft_steps=150, sft_batch_size=16, sft_lr=2e-3, sft_seed=0)
    student = ModelSettings(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2,
                            init_seed=1, sft_steps=40, sft_batch_size=16, sft_lr=2e-3, sft_seed=1)
    # One prompt per step allows one update per batch only (each update takes whole groups).
    rl = rl_budget(steps=12, prompts_per_step=1, group_size=4, updates_per_batch=1, micro_batch_size=4,
                   max_new_tokens=128, max_prompt_tokens=880)  # 880 + 128 + 8 <= 1024 positions
    return TaskSettings("knights_knaves", data, teacher, student, rl, eval=ComparisonEval(limit=90, max_num_seqs=4),
                        max_position_embeddings=1024)


def knights_knaves_compact_settings() -> TaskSettings:
    """Knights and Knaves with 2..4 inhabitants in the compact form of :mod:`rlad_megatron.tasks.knights_knaves.compact`
    (prompts of 12..60 characters, a truth-table-search trace in ``<think>``), which tiny models can learn on a CPU.
    The teacher is deeper than the student, so it executes the search more reliably, and both lose accuracy as
    the number of inhabitants grows (longer searches)."""
    data = DataSettings(n_train=6000, n_test=150, seed=0)  # per size: n_train / 3, n_test / 3
    teacher = ModelSettings(num_layers=4, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                            init_seed=0, sft_steps=1500, sft_batch_size=32, sft_lr=2e-3, sft_seed=0)
    student = ModelSettings(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2,
                            init_seed=1, sft_steps=300, sft_batch_size=32, sft_lr=2e-3, sft_seed=1)
    rl = rl_budget(steps=40, prompts_per_step=16, group_size=8, updates_per_batch=1, micro_batch_size=64,
                   lr=2e-4, max_new_tokens=256, max_prompt_tokens=72)
    return TaskSettings("knights_knaves_compact", data, teacher, student, rl, eval=ComparisonEval(limit=150),
                        max_position_embeddings=336)


def carry_trap_settings() -> TaskSettings:
    """Additions whose teacher drops the final carry (:mod:`rlad_megatron.tasks.carry_trap`): right on ``plain``
    prompts, always wrong on ``carry`` ones; the student is warm-started on correct targets and is weaker everywhere
    (measured in docs/results.md). The RL budget is sized for a 2-core machine shared with other work: 3 seeds x 7
    arms in about an hour (docs/results.md)."""
    data = DataSettings(n_train=4000, n_test=200, min_digits=1, max_digits=3, seed=0)
    teacher = ModelSettings(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2,
                            init_seed=0, sft_steps=800, sft_batch_size=32, sft_lr=3e-3, sft_seed=0)
    student = ModelSettings(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2,
                            init_seed=1, sft_steps=400, sft_batch_size=32, sft_lr=3e-3, sft_seed=1)
    rl = rl_budget(steps=100, prompts_per_step=8, group_size=8, lr=2e-4, max_new_tokens=47, max_prompt_tokens=32)
    return TaskSettings("carry_trap", data, teacher, student, rl, eval=ComparisonEval(limit=200, k=4),
                        max_position_embeddings=256, teacher_reference="flawed", rl_prompts=1024, trust_k=8)


def task_settings(task: str) -> TaskSettings:
    if task == "carry_trap":
        return carry_trap_settings()
    if task == "arithmetic":
        return arithmetic_settings()
    if task == "knights_knaves_compact":
        return knights_knaves_compact_settings()
    if task == "knights_knaves":
        return knights_knaves_settings()
    raise ValueError(f"unknown comparison task {task!r}; choose one of {list(TASKS)}")


def short_settings(task: str = "arithmetic") -> TaskSettings:
    """The test suite's version (arithmetic): 1-digit additions, a teacher and student of the student's shape
    with brief supervised starts (the student earns some reward, so groups are not all uniform and the losses
    act), 2 RL steps of 4 prompts x G=4, 16 eval prompts."""
    if task == "carry_trap":
        return carry_trap_short_settings()
    if task != "arithmetic":
        raise ValueError("the short comparison exists for the arithmetic and carry_trap tasks only")
    s = arithmetic_settings()
    s.data = dataclasses.replace(s.data, n_train=200, n_test=16, max_digits=1)
    s.teacher = dataclasses.replace(s.student, init_seed=5, sft_steps=250, sft_seed=0)
    s.student = dataclasses.replace(s.student, sft_steps=120)
    s.rl = dataclasses.replace(s.rl, steps=2, prompts_per_step=4, group_size=4, micro_batch_size=8,
                               max_new_tokens=26)
    s.eval = ComparisonEval(limit=16)
    return s


def carry_trap_short_settings() -> TaskSettings:
    """carry_trap in miniature (the preparation's unit test): 1..2 digits, brief supervised starts, 2 RL steps,
    a teacher pre-pass of 2 samples over 16 RL prompts, Mean@2 on 16 test prompts."""
    s = carry_trap_settings()
    s.data = dataclasses.replace(s.data, n_train=200, n_test=16, max_digits=2)
    s.teacher = dataclasses.replace(s.teacher, sft_steps=30)
    s.student = dataclasses.replace(s.student, sft_steps=20)
    s.rl = dataclasses.replace(s.rl, steps=2, prompts_per_step=4, group_size=4, micro_batch_size=8,
                               max_new_tokens=26)
    s.eval = ComparisonEval(limit=16, k=2)
    s.rl_prompts, s.trust_k = 16, 2
    return s
