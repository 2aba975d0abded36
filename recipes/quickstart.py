"""The quickstart recipe: RLAD on CPU with tiny models, two torchrun processes, NeMo-Run's local executor.

    assets = prepare_quickstart_assets("runs/quickstart_assets")     # tiny HF student/teacher + arithmetic data
    recipe = quickstart(**assets, output_dir="runs/quickstart")
    python -m recipes quickstart                                     # the same from the command line

The tiny models are random (``rlad_megatron.tiny.hf_model``): this recipe proves that the launch path works end to
end (torchrun, Megatron learner at TP=2 over gloo, colocated vLLM CPU engine, weight sync), not that a student
learns; ``make demo`` (the trainer's quickstart) trains a real tiny teacher first.
"""
from __future__ import annotations

import json
from pathlib import Path

from rlad_megatron.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RolloutConfig,
    RunConfig,
    TrainerConfig,
    teacher_use,
)
from rlad_megatron.config.loss import LossConfig
from rlad_megatron.placement import ModelShape

from recipes.base import CPU_ENV, Recipe

#: Tiny shapes: head_dim 32 (vLLM's CPU attention has no kernel for 16), heads and KV heads divisible by TP=2.
STUDENT_SHAPE = dict(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
TEACHER_SHAPE = dict(num_layers=2, hidden_size=256, intermediate_size=512, num_heads=8, num_kv_heads=2)
#: The char tokenizer's vocabulary (rlad_megatron.data.char_tokenizer: 4 specials + 96 characters; the quickstart
#: test compares these shapes with the created models'), for the memory plan.
CHAR_VOCAB_SIZE = 100


def prepare_quickstart_assets(workdir: str | Path, *, num_records: int = 64, seed: int = 0) -> dict[str, str]:
    """Create (once) a tiny student and teacher (Qwen3 family, same char tokenizer) and arithmetic data files.

    Returns ``{"student": dir, "teacher": dir, "train_file": path, "eval_file": path}``; existing files are kept.
    """
    from rlad_megatron.tasks.arithmetic.task import generate_records
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    root = Path(workdir).resolve()
    paths = {"student": root / "student", "teacher": root / "teacher",
             "train_file": root / "train.jsonl", "eval_file": root / "eval.jsonl"}
    if not (paths["student"] / "config.json").exists():
        make_tiny_hf_model(paths["student"], family="qwen3", seed=seed + 1, **STUDENT_SHAPE)
    if not (paths["teacher"] / "config.json").exists():
        make_tiny_hf_model(paths["teacher"], family="qwen3", seed=seed + 2, **TEACHER_SHAPE)
    for key, n, offset in (("train_file", num_records, 0), ("eval_file", max(8, num_records // 4), 1)):
        if not paths[key].exists():
            records = generate_records(n, seed=seed + 100 * offset, min_digits=1, max_digits=2,
                                       id_prefix="train" if offset == 0 else "eval")
            paths[key].parent.mkdir(parents=True, exist_ok=True)
            paths[key].write_text("".join(json.dumps(r) + "\n" for r in records))
    return {k: str(v) for k, v in paths.items()}


def quickstart(student: str, teacher: str, train_file: str, eval_file: str | None = None, *,
               output_dir: str = "runs/quickstart", steps: int = 3, nproc: int = 2, tensor_parallel: int = 2,
               algorithm: str = "rlad") -> Recipe:
    """RLAD for ``steps`` steps on ``nproc`` CPU processes (TP=``tensor_parallel``, DP = nproc / TP).

    ``student``/``teacher`` are Hugging Face directories sharing a tokenizer; ``train_file`` (and ``eval_file``)
    are jsonl records of the arithmetic task (see :func:`prepare_quickstart_assets`).
    """
    config = RunConfig(
        model=ModelConfig(student=student, teacher=teacher if teacher_use(LossConfig(algorithm)) != "none" else None,
                          params_dtype="float32"),
        parallel=ParallelConfig(tensor_parallel=tensor_parallel),
        rollout=RolloutConfig(group_size=4, max_new_tokens=24, dtype="float32", kv_cache_mb=64,
                              placement="colocated"),
        data=DataConfig(task="arithmetic", train_files=[train_file], eval_files=[eval_file] if eval_file else [],
                        prompts_per_step=4, max_prompt_tokens=32),
        optim=OptimConfig(lr=1e-4, use_distributed_optimizer=True),
        loss=LossConfig(algorithm=algorithm),
        # Random tiny models rarely earn a reward, so every group would be uniform and dropped: keep them, so that
        # each step runs the policy update (forward/backward/optimizer) even when all advantages are zero.
        trainer=TrainerConfig(steps=steps, micro_batch_size=8, skip_uniform_groups=False, eval_every=0,
                              eval_samples=1, save_every=0, output_dir=output_dir, export_hf=False),
    )
    return Recipe(name="quickstart", description=f"CPU smoke run: tiny {algorithm} on arithmetic, {nproc} torchrun "
                  f"processes (TP={tensor_parallel})", config=config, nodes=1, gpus_per_node=nproc,
                  student_shape=ModelShape("tiny-student", **STUDENT_SHAPE, vocab_size=CHAR_VOCAB_SIZE, qk_norm=True),
                  teacher_shape=ModelShape("tiny-teacher", **TEACHER_SHAPE, vocab_size=CHAR_VOCAB_SIZE, qk_norm=True),
                  env=dict(CPU_ENV), gpu=False)
