"""The real trainer on warm-started tiny models at TP=1, TP=2, PP=2, DP=2 (with packed token-budget micro-batches),
CP=2, with engines sharded like the learner at TP=2 and PP=2, with the teacher in a pool of its own (Megatron teacher
ranks, a vLLM teacher engine process), and at TP=1 with asynchronous rollouts and the Megatron teacher pool
(a test helper; the library never imports it). Each run is launched once per session, on first use
(fixture ``layout_runs`` in tests/e2e/conftest.py): test_trainer_layouts compares and checks them all,
test_console_quiet checks the TP=2 run's console and log (that run also logs to W&B, offline, for that check), and
test_trainer_teachers compares tp1's first step with the vLLM teacher's, which saves them launches of their own.

A launch costs ~30-40 s of start-up and shut-down on the 2-core machine and ~1 s a step: only the runs whose reward
curve is checked (tp1 and async) train for STEPS steps; the others train the 2 steps that are compared to tp1's."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlad_megatron.testing.tiny_run import launch, prepare_warm_models, read_metrics, run_config

STEPS = 24
EVAL_EVERY = 12


@dataclass(frozen=True)
class Layout:
    processes: int
    parallel: dict
    steps: int
    rollout: dict = field(default_factory=dict)
    """Rollout settings on top of the common ones."""
    trainer: dict = field(default_factory=dict)
    """Trainer settings on top of the common ones."""
    teacher: dict = field(default_factory=dict)
    """The teacher section (default: the Megatron teacher)."""
    loss: dict = field(default_factory=dict)
    """Loss settings on top of the common ones (rlad, alpha 0.5)."""
    rows: str | None = None
    """A training file of its own (:func:`rated_rows`): the first RATED_PROMPTS prompts with a teacher pass rate
    each ("mixed": every third, GATED of them, 0 and the others 1; "zero": all 0), every one of them in every step; "mixed"
    also routes them to two teachers (ROUTES) by the field "domain"."""


LAYOUTS = {
    "tp1": Layout(1, {}, STEPS),
    "tp2": Layout(2, {"tensor_parallel": 2}, 2),
    "pp2": Layout(2, {"pipeline_parallel": 2}, 2),
    # DP=2 with token-budget micro-batches of packed sequences, balanced over the data-parallel ranks (each rank's
    # micro-batches differ in count and shape), in the training and in the forward-only (old-policy) passes. The
    # fixed micro-batches of the other layouts at DP=2 have no launch of their own: what DP=2 changes in the trainer
    # (prompts and engines per rank, gradient all-reduce) is the same on both paths, and the fixed path's DP=2
    # step is tests/distributed/test_parallel_equivalence.py's dp2_distopt layout (and test_slurm_cluster's two-node
    # job runs the trainer at DP=2 on them).
    "dp2_packed": Layout(2, {}, 2, trainer={"max_tokens_per_micro_batch": 256, "sequence_packing": True}),
    "cp2": Layout(2, {"context_parallel": 2}, 2),  # each sequence split over 2 ranks (models.cp_attention on CPU)
    # engines sharded like the learner (rollout.executor=external_launcher): at TP=2 every rank holds one shard of
    # its group's engine, at PP=2 every rank a whole engine; the evaluation runs through rank 0's sharded engine
    "el_tp2": Layout(2, {"tensor_parallel": 2}, 2, {"executor": "external_launcher"}),
    "el_pp2": Layout(2, {"pipeline_parallel": 2}, 2, {"executor": "external_launcher"}),
    # tp1's first step with the teacher's log-probs from a vLLM engine instead of the Megatron teacher
    # (tests/e2e/test_trainer_teachers.py compares the two)
    "vllm_teacher": Layout(1, {}, 1, teacher={"source": "vllm"}),
    # tp1 with the teacher in a pool of its own (teacher.placement=separate), compared with tp1 / vllm_teacher at
    # 1e-6 (tests/e2e/test_trainer_teachers.py): the Megatron teacher on a rank of its own (the job's last of 2) ...
    "pool_megatron": Layout(2, {}, 2, teacher={"placement": "separate", "ranks": 1}),
    # ... and the vLLM teacher in an engine process of its own
    "pool_vllm": Layout(1, {}, 1, teacher={"source": "vllm", "placement": "separate"}),
    # tp1 with the engine in a process of its own generating batch t+1 while the learner trains on batch t
    # (docs/async_rollouts.md), and the Megatron teacher on a rank of its own scoring batch t+1 as soon as it is
    # generated; on CPU the engine gets one core, the learner and the teacher rank share the other.
    "async": Layout(2, {}, STEPS, {"placement": "disaggregated", "mode": "async", "max_staleness": 1,
                                   "engine_cpus": 1}, teacher={"placement": "separate", "ranks": 1}),
    # the teacher's top-k distribution (loss.topk_kl, the colocated Megatron teacher; tests/e2e/test_trainer_topk.py):
    # RLAD + the forward top-k KL as an auxiliary term, in packed token-budget micro-batches with the fused head ...
    "topk_rlad": Layout(1, {}, 2, trainer={"max_tokens_per_micro_batch": 256, "sequence_packing": True},
                        loss={"topk_kl": "forward", "topk_beta": 0.5, "topk_k": 4}),
    # ... the same with the teacher on a rank of its own (the pool's replies carry the top-k; compared at 1e-6) ...
    "topk_pool": Layout(2, {}, 2, trainer={"max_tokens_per_micro_batch": 256, "sequence_packing": True},
                        loss={"topk_kl": "forward", "topk_beta": 0.5, "topk_k": 4},
                        teacher={"placement": "separate", "ranks": 1}),
    # ... its first step with a colocated vLLM teacher (prompt log-probs, prompt_logprobs=k) ...
    "topk_vllm": Layout(1, {}, 1, trainer={"max_tokens_per_micro_batch": 256, "sequence_packing": True},
                        loss={"topk_kl": "forward", "topk_beta": 0.5, "topk_k": 4}, teacher={"source": "vllm"}),
    # ... the same with the vLLM teacher in an engine process of its own (compared with topk_vllm at 1e-6) ...
    "topk_pool_vllm": Layout(1, {}, 1, trainer={"max_tokens_per_micro_batch": 256, "sequence_packing": True},
                             loss={"topk_kl": "forward", "topk_beta": 0.5, "topk_k": 4},
                             teacher={"source": "vllm", "placement": "separate"}),
    # ... and KDRL whose penalty is the reverse top-k KL, with the logits path (no fused head)
    "topk_kdrl": Layout(1, {}, 2, trainer={"fused_logprobs": False},
                        loss={"algorithm": "kdrl", "kd_estimator": "topk", "topk_kl": "reverse", "topk_k": 4}),
}
# Two teachers routed by a record field (the trained teacher "sft" in the learner, the warm student "warm" as a vLLM
# scoring engine, weight 0.5) with
# teacher trust (loss.teacher_trust=gate) on a file of rated prompts, every prompt in every step and no group skipped:
# each teacher's share and loss/trust/gated_frac are known from the data (tests/e2e/test_trainer_trust.py,
# test_several_teachers.py) ...
LAYOUTS["teachers_trust"] = Layout(1, {}, 2, trainer={"skip_uniform_groups": False}, loss={"teacher_trust": "gate"},
                                   rows="mixed")
# ... and with every prompt gated, RLAD is GRPO: the same losses as grpo on the same data, step for step
LAYOUTS["trust_all_gated"] = Layout(1, {}, 2, loss={"teacher_trust": "gate"}, rows="zero")
LAYOUTS["grpo_rated"] = Layout(1, {}, 2, loss={"algorithm": "grpo"}, rows="zero")
RATED_PROMPTS, GATED = 16, 6
#: "mixed" rows: the domain (= teacher name) of each of the RATED_PROMPTS prompts, 10 "sft" then 6 "warm"
ROUTES = ["sft"] * 10 + ["warm"] * 6


def rated_rows(train: str, out: Path, kind: str) -> str:
    """The first RATED_PROMPTS rows of ``train`` with ``teacher_pass_rate`` (see ``Layout.rows``), written to ``out``."""
    from rlad_megatron.data.prompt_dataset import TEACHER_PASS_RATE

    rows = [json.loads(line) for line in Path(train).read_text().splitlines() if line.strip()][:RATED_PROMPTS]
    for i, row in enumerate(rows):
        row[TEACHER_PASS_RATE] = 0.0 if kind == "zero" or i % 3 == 0 else 1.0  # mixed: rows 0, 3, .., 15 gated
        if kind == "mixed":
            row["domain"] = ROUTES[i]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(out)


#: The layout whose console test_console_quiet reads; W&B (offline, no account) is on in it.
CONSOLE_LAYOUT = "tp2"


@dataclass
class LayoutRun:
    metrics: list[dict]
    console: str
    """What the launch printed (stdout and stderr of torchrun and the ranks)."""
    output_dir: Path


class LayoutRuns:
    """``runs[name]``: the finished run of layout ``name`` (launched on first access, then kept)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._paths: dict | None = None
        self._runs: dict[str, LayoutRun] = {}

    @property
    def paths(self) -> dict:
        if self._paths is None:
            self._paths = prepare_warm_models(self.root / "models")
        return self._paths

    def __getitem__(self, name: str) -> LayoutRun:
        if name not in self._runs:
            self._runs[name] = self._launch(name)
        return self._runs[name]

    def _launch(self, name: str) -> LayoutRun:
        layout = LAYOUTS[name]
        workdir = self.root / name
        # every run evaluates after its last step too (trainer.eval_every)
        trainer = {"steps": layout.steps, "micro_batch_size": 16, "updates_per_batch": 4, "export_hf": False,
                   "eval_every": EVAL_EVERY, "eval_samples": 2, **layout.trainer}
        env = None
        if name == CONSOLE_LAYOUT:
            trainer["wandb"] = {"enabled": True, "mode": "offline"}
            env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_CONFIG_DIR": str(workdir / "no-wandb-login")}
        data = {"prompts_per_step": 16, "eval_files": [self.paths["train"]]}
        if layout.rows is not None:
            data["train_files"] = [rated_rows(self.paths["train"], workdir / f"rated_{layout.rows}.jsonl", layout.rows)]
        sections = {"teacher": layout.teacher} if layout.teacher else {}
        if layout.rows == "mixed":  # two teachers, routed by the rows' "domain"
            sections = {"model": {"teacher": None}, "teacher": {"route_field": "domain", "teachers": [
                {"name": "sft", "model": self.paths["teacher"]},
                {"name": "warm", "model": self.paths["student"], "weight": 0.5, "source": "vllm"}]}}
        # Four updates per rollout batch: old-policy log-probs are computed (not the detached current ones).
        config = run_config(
            self.paths, workdir / "out", parallel=layout.parallel,
            rollout={"group_size": 8, "max_new_tokens": 20, **layout.rollout},
            data=data,
            optim={"lr": 3e-4, "min_lr": 3e-4},  # constant: the runs have different lengths
            trainer=trainer,
            loss={"algorithm": "rlad", "alpha": 0.5, **layout.loss},
            **sections,
        )
        done = launch(config, layout.processes, workdir=workdir, timeout=900, extra_env=env)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-6000:]}"
        return LayoutRun(read_metrics(workdir / "out"), done.stdout, workdir / "out")
