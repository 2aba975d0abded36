"""The paper's runs (arXiv 2602.22495, Sec. 4; settings restated in docs/algorithm.md), one function each.

Logic (Knights and Knaves, Logic-RL setup), 1 node x 8 GPUs: Qwen3-0.6B or Qwen3-1.7B student, Qwen3-8B teacher.
Math (Skywork-OR1 data), 8 nodes x 8 GPUs: Qwen3-1.7B-Base <- Qwen3-8B and Qwen3-8B-Base <- Qwen3-32B.
Common: G=8, lr 1e-6, 256 prompts per step, alpha 0.5, eps 0.20/0.28 (clip-higher), loss aggregation of Eq. 1.
Each takes ``algorithm`` ("rlad", or the baselines "grpo" and "kdrl"); the registry in ``recipes/__init__.py``
names the variants (``logic_qwen3_0p6b_grpo``, ...).

Paths are where the checkpoints and data sit *inside the job* (the container's mounts): ``model_root/<HF name>``
holds each Hugging Face checkpoint, ``data_root`` the prepared jsonl/parquet files, ``output_root`` the runs.
Choices the paper does not state are marked "ours" and are plain fields to override (``trainer.steps=...``).
"""
from __future__ import annotations

from rlad_megatron.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    RolloutConfig,
    RunConfig,
    TeacherConfig,
    TrainerConfig,
    teacher_use,
)
from rlad_megatron.config.loss import LossConfig
from rlad_megatron.placement import ModelShape

from recipes.base import GPU_ENV, Recipe

#: Shapes of the paper's models (their config.json), for the head/layer checks and the memory plan before launch.
QWEN3_VOCAB = 151936
QWEN3_SHAPES: dict[str, ModelShape] = {
    name: ModelShape(name, *dims[:5], head_dim=128, vocab_size=QWEN3_VOCAB, tie_word_embeddings=dims[5],
                     qk_norm=True)
    for name, dims in {
        # name: (layers, heads, kv heads, hidden, intermediate, tied embeddings); head_dim 128 for all
        "Qwen3-0.6B": (28, 16, 8, 1024, 3072, True),
        "Qwen3-1.7B": (28, 16, 8, 2048, 6144, True),
        "Qwen3-1.7B-Base": (28, 16, 8, 2048, 6144, True),
        "Qwen3-4B": (36, 32, 8, 2560, 9728, True),
        "Qwen3-8B": (36, 32, 8, 4096, 12288, False),
        "Qwen3-8B-Base": (36, 32, 8, 4096, 12288, False),
        "Qwen3-32B": (64, 64, 8, 5120, 25600, False),
    }.items()
}
#: Qwen3-30B-A3B (config.json of Qwen/Qwen3-30B-A3B): 48 MoE layers, 128 experts of width 768, 8 per token.
QWEN3_SHAPES["Qwen3-30B-A3B"] = ModelShape(
    "Qwen3-30B-A3B", 48, 32, 4, 2048, 6144, head_dim=128, vocab_size=QWEN3_VOCAB, tie_word_embeddings=False,
    num_experts=128, moe_top_k=8, moe_intermediate_size=768, qk_norm=True)

PAPER_ALGORITHMS: tuple[str, ...] = ("rlad", "grpo", "kdrl")


def _loss(algorithm: str) -> LossConfig:
    if algorithm not in PAPER_ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r}: the paper recipes come as {list(PAPER_ALGORITHMS)}")
    # rlad: TRRD with alpha 0.5 and the App. B clamp c=1; kdrl: GRPO + reverse KL annealed 5e-3 -> 1e-3 (KDRL).
    return LossConfig(algorithm=algorithm, alpha=0.5, eps_low=0.20, eps_high=0.28, teacher_log_ratio_clip=1.0,
                      aggregation="seq-mean-token-mean", kd_beta=5e-3, kd_beta_final=1e-3,
                      kd_beta_schedule="linear")


def _paper_recipe(*, name: str, description: str, student: str, teacher: str, algorithm: str, nodes: int,
                  tp: int, task: str, train_files: list[str], eval_files: list[str], max_response: int,
                  max_prompt_tokens: int, micro_batch: int, steps: int, eval_every: int, eval_samples: int,
                  model_root: str, output_root: str, teacher_offload: bool, token_budget: int, recompute: str,
                  gpu_memory: str) -> Recipe:
    loss = _loss(algorithm)
    uses_teacher = teacher_use(loss) != "none"
    config = RunConfig(
        model=ModelConfig(student=f"{model_root}/{student}",
                          teacher=f"{model_root}/{teacher}" if uses_teacher else None,
                          params_dtype="bfloat16"),
        parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=1, sequence_parallel=tp > 1,
                                recompute=recompute),
        rollout=RolloutConfig(
            group_size=8, temperature=1.0, top_p=1.0, max_new_tokens=max_response, placement="colocated",
            dtype="bfloat16",
            kv_cache_mb=32768,  # ours: 32 GiB of KV cache per engine; the learner sleeps while the engine generates
            max_logprob_mismatch=0.05,  # bf16 engine vs learner differ by ~1e-2 (fp32: 1e-5); ours
            tis_cap=2.0,  # ours: truncated importance sampling against the bf16 rollout/learner mismatch
        ),
        data=DataConfig(task=task, train_files=train_files, eval_files=eval_files, prompts_per_step=256,
                        max_prompt_tokens=max_prompt_tokens),
        optim=OptimConfig(lr=1e-6, clip_grad=1.0, use_distributed_optimizer=True),
        loss=loss,
        # Token-budget micro-batches (ours, from the memory plan: `python -m recipes NAME --plan`): the paper's
        # micro-batch of 16/32 sequences padded to 10K-32K tokens would need 250-700 GiB of activations per GPU.
        # At least one whole longest sequence (prompt + response) per micro-batch.
        trainer=TrainerConfig(steps=steps, updates_per_batch=1, micro_batch_size=micro_batch,
                              max_tokens_per_micro_batch=max(token_budget, max_prompt_tokens + max_response),
                              skip_uniform_groups=True, eval_every=eval_every, eval_samples=eval_samples,
                              eval_temperature=0.6, eval_top_p=0.95, save_every=50,
                              output_dir=f"{output_root}/{name}"),
        teacher=TeacherConfig(source="megatron", offload=teacher_offload),
    )
    return Recipe(name=name, description=description, config=config, nodes=nodes, gpus_per_node=8,
                  student_shape=QWEN3_SHAPES[student], teacher_shape=QWEN3_SHAPES[teacher] if uses_teacher else None,
                  env=dict(GPU_ENV), gpu=True, gpu_memory=gpu_memory)


#: Token budget and recomputation of each logic student on an H100 (80 GB), from the memory plan with the fused
#: output head (``trainer.fused_logprobs``, no logits): the 0.6B student fits 15K tokens per micro-batch without
#: recomputation (10K with the logits); the 1.7B student needs full recomputation for one 9K sequence, and then
#: fits 32K (10K with the logits).
LOGIC_MEMORY: dict[str, dict] = {
    "Qwen3-0.6B": dict(token_budget=15360, recompute="none"),
    "Qwen3-1.7B": dict(token_budget=32768, recompute="full"),
}


def _logic(student: str, algorithm: str, max_response: int, model_root: str, data_root: str,
           output_root: str, steps: int) -> Recipe:
    tag = student.lower().replace("-", "_").replace(".", "p")
    return _paper_recipe(
        name=f"logic_{tag}_{algorithm}_{max_response // 1024}k",
        description=f"K&K logic: {student} student <- Qwen3-8B teacher, {algorithm}, {max_response}-token responses,"
                    " 1 node x 8 GPUs",
        student=student, teacher="Qwen3-8B", algorithm=algorithm, nodes=1, tp=1, task="knights_knaves",
        train_files=[f"{data_root}/kk/train.jsonl"], eval_files=[f"{data_root}/kk/test.jsonl"],
        max_response=max_response, max_prompt_tokens=1024, micro_batch=32, steps=steps,
        eval_every=20, eval_samples=1,  # K&K is scored by accuracy at temperature 0.6
        model_root=model_root, output_root=output_root, teacher_offload=False, gpu_memory="h100",
        **LOGIC_MEMORY[student])


def logic_qwen3_0p6b(algorithm: str = "rlad", max_response: int = 8192, model_root: str = "/models",
                     data_root: str = "/data", output_root: str = "/results", steps: int = 300) -> Recipe:
    """K&K, Qwen3-0.6B <- Qwen3-8B on 8 GPUs (TP=1, DP=8); ``max_response`` 8192 or 2048 as in the paper.

    ``steps`` is ours (the paper gives no step count)."""
    return _logic("Qwen3-0.6B", algorithm, max_response, model_root, data_root, output_root, steps)


def logic_qwen3_1p7b(algorithm: str = "rlad", max_response: int = 8192, model_root: str = "/models",
                     data_root: str = "/data", output_root: str = "/results", steps: int = 300) -> Recipe:
    """K&K, Qwen3-1.7B <- Qwen3-8B on 8 GPUs (TP=1, DP=8); ``steps`` is ours."""
    return _logic("Qwen3-1.7B", algorithm, max_response, model_root, data_root, output_root, steps)


MATH_EVAL_SETS: tuple[str, ...] = ("aime24", "aime25", "amc23", "amc24", "math500")


def _math(student: str, teacher: str, tp: int, algorithm: str, max_response: int, model_root: str,
          data_root: str, output_root: str, steps: int, teacher_offload: bool, token_budget: int,
          recompute: str) -> Recipe:
    tag = student.lower().replace("-", "_").replace(".", "p")
    return _paper_recipe(
        name=f"math_{tag}_{algorithm}_{max_response // 1024}k",
        description=f"Math (Skywork-OR1): {student} student <- {teacher} teacher, {algorithm}, {max_response}-token "
                    "responses, 8 nodes x 8 GPUs",
        student=student, teacher=teacher, algorithm=algorithm, nodes=8, tp=tp, task="math",
        train_files=[f"{data_root}/skywork_or1/train.parquet"],
        eval_files=[f"{data_root}/math_eval/{name}.jsonl" for name in MATH_EVAL_SETS],
        max_response=max_response, max_prompt_tokens=2048, micro_batch=16, steps=steps,
        eval_every=50, eval_samples=4,  # ours: periodic Mean@4; the final Mean@32/Pass@32 is `rlad-megatron eval`
        model_root=model_root, output_root=output_root, teacher_offload=teacher_offload, token_budget=token_budget,
        recompute=recompute, gpu_memory="h200")


def math_qwen3_1p7b_base(algorithm: str = "rlad", max_response: int = 30720, model_root: str = "/models",
                         data_root: str = "/data", output_root: str = "/results", steps: int = 500) -> Recipe:
    """Math, Qwen3-1.7B-Base <- Qwen3-8B on 8 x 8 H200 GPUs (TP=2 + sequence parallel, DP=32), 80K-token
    micro-batches (64K with the logits; the fused output head holds none); ``steps`` is ours."""
    return _math("Qwen3-1.7B-Base", "Qwen3-8B", 2, algorithm, max_response, model_root, data_root, output_root,
                 steps, teacher_offload=False, token_budget=81920, recompute="none")


def math_qwen3_8b_base(algorithm: str = "rlad", max_response: int = 30720, model_root: str = "/models",
                       data_root: str = "/data", output_root: str = "/results", steps: int = 500) -> Recipe:
    """Math, Qwen3-8B-Base <- Qwen3-32B on 8 x 8 H200 GPUs (TP=4 + sequence parallel, DP=16), 64K-token
    micro-batches (40K with the logits; the fused output head holds none).

    The 32B teacher (64 GB in bf16, 16 GB per GPU at TP=4) is meant to be offloaded to the host between scoring
    passes (``teacher.offload``: its weights count in the memory plan's scoring phase only; it fits an H200
    without). ``steps`` is ours."""
    return _math("Qwen3-8B-Base", "Qwen3-32B", 4, algorithm, max_response, model_root, data_root, output_root,
                 steps, teacher_offload=True, token_budget=65536, recompute="none")
