"""A Mixture-of-Experts teacher: Qwen3-30B-A3B (48 layers, 128 experts of width 768, 8 per token) distilled into a
dense Qwen3 student on one node of 8 GPUs (issue 19).

Layout: learner TP=1 x DP=8; the frozen Megatron teacher on the learner's GPUs with the learner's layout. The
experts are not tensor-parallel: at expert parallelism 1 (the default) every GPU holds all 128 of every layer
(30.5B parameters, 57 GiB in bf16), which fits an H200 (141 GB), not an H100. ``--arg teacher_ep=8`` sets
``parallel.expert_parallel=8``: each GPU holds 16 of the 128 experts of every layer (7 GiB of experts per GPU
instead of 57), the trainer makes every micro-batch's shape common over the EP group (the allgather token
dispatcher needs equal token counts; ``rlad_megatron/learner/expert_parallel.py``), and the run launches like the
EP=1 one. (EP inside the trainer is tested on gloo/CPU against EP=1; not yet on GPUs.)

``--arg teacher_pool=8`` (the recipe ``math_qwen3_1p7b_from_30b_a3b_pool``) puts the teacher in a pool of its own
(``teacher.placement=separate``): a second node's 8 GPUs serve it at EP=8 (16 of the 128 experts per GPU, TP=1, 8
replicas), the learner keeps the first node's 8 GPUs (with its colocated engines), and the teacher's scoring leaves
the learner's critical path (docs/large_models.md, "The teacher pool"). ``--plan`` prints each pool's GPU memory and
the three-pool throughput balance with each pool's expected idle fraction.
"""
from __future__ import annotations

import dataclasses

from recipes.base import Recipe
from recipes.paper import MATH_EVAL_SETS, _paper_recipe

#: Students the MoE recipe accepts (dense Qwen3 sharing the teacher's tokenizer) and their memory settings on an
#: H200 next to the EP=1 teacher (from the memory plan with the fused output head, ``trainer.fused_logprobs``;
#: with the logits the budgets were 16K and 10K).
MOE_STUDENTS: dict[str, dict] = {
    "Qwen3-1.7B": dict(token_budget=65536, recompute="full", kv_cache_mb=32768),
    "Qwen3-4B": dict(token_budget=49152, recompute="full", kv_cache_mb=24576),
}


def math_qwen3_1p7b_from_30b_a3b(algorithm: str = "rlad", max_response: int = 8192, student: str = "Qwen3-1.7B",
                                 model_root: str = "/models", data_root: str = "/data", output_root: str = "/results",
                                 steps: int = 300, teacher_ep: int = 1, teacher_pool: int = 0) -> Recipe:
    """Math (Skywork-OR1), a dense Qwen3 student (``student``: Qwen3-1.7B or Qwen3-4B) <- Qwen3-30B-A3B (MoE), 1 node
    x 8 H200 (TP=1, DP=8); ``teacher_ep``: expert parallelism of the teacher (a divisor of 8); ``teacher_pool``: GPUs
    of a teacher pool of its own (0: the teacher on the learner's GPUs; 8: a second node, at EP=``teacher_ep``);
    ``steps`` is ours."""
    if algorithm not in ("rlad", "kdrl"):
        raise ValueError(f"algorithm={algorithm!r}: the MoE-teacher recipe distils, choose 'rlad' or 'kdrl'")
    if teacher_ep < 1 or 8 % teacher_ep:
        raise ValueError(f"teacher_ep={teacher_ep}: expert parallelism splits the 128 experts over data-parallel "
                         "ranks of the 8 GPUs; choose 1, 2, 4 or 8")
    if teacher_pool not in (0, 8):
        raise ValueError(f"teacher_pool={teacher_pool}: 0 (the teacher on the learner's GPUs) or 8 (a node of its own)")
    if student not in MOE_STUDENTS:
        raise ValueError(f"student={student!r}: choose one of {sorted(MOE_STUDENTS)}")
    tag = student.lower().replace("-", "_").replace(".", "p")
    memory = dict(MOE_STUDENTS[student])
    kv_cache_mb = memory.pop("kv_cache_mb")
    recipe = _paper_recipe(
        name=f"math_{tag}_from_30b_a3b_{algorithm}_{max_response // 1024}k",
        description=f"Math (Skywork-OR1): {student} student <- Qwen3-30B-A3B MoE teacher (EP={teacher_ep}), "
                    f"{algorithm}, {max_response}-token responses, 1 node x 8 GPUs",
        student=student, teacher="Qwen3-30B-A3B", algorithm=algorithm, nodes=1, tp=1, task="math",
        train_files=[f"{data_root}/skywork_or1/train.parquet"],
        eval_files=[f"{data_root}/math_eval/{name}.jsonl" for name in MATH_EVAL_SETS],
        max_response=max_response, max_prompt_tokens=2048, micro_batch=16, steps=steps, eval_every=50,
        eval_samples=4, model_root=model_root, output_root=output_root, teacher_offload=False, gpu_memory="h200",
        **memory)
    recipe.config.rollout.kv_cache_mb = kv_cache_mb
    if not teacher_pool:
        recipe.config.parallel.expert_parallel = teacher_ep
        return recipe
    t = recipe.config.teacher
    t.placement, t.ranks, t.expert_parallel = "separate", teacher_pool, teacher_ep
    recipe.config.validate()
    return dataclasses.replace(
        recipe, name=recipe.name.replace("_from_30b_a3b_", "_from_30b_a3b_pool_"), nodes=2, teacher_gpus=teacher_pool,
        description=recipe.description.replace(f"(EP={teacher_ep})", f"on {teacher_pool} GPUs of its own "
                                               f"(EP={teacher_ep})").replace("1 node x 8 GPUs", "2 nodes x 8 GPUs"))
