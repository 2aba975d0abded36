"""The memory plan's estimate against measured CPU peaks of the learner, on tiny Qwen3 / Qwen3-MoE shapes.

    PYTHONPATH=$PWD .venv/bin/python bench/memory_plan.py          # about 3 minutes on 2 cores

For each case, the student is built the way the trainer builds it (Megatron GPTModel from a ModelArch, DDP with an
fp32 gradient buffer, the distributed Adam) and one training step runs (one micro-batch through Megatron's schedule
with the vocabulary-parallel log-prob kernel, then the optimizer step). Measured with torch's profiler (every CPU
allocation and free replayed: ``rlad_megatron.testing.memory.peak_bytes``):
- state: what building leaves allocated (weights + gradient buffer) vs the plan's weights + gradients;
- adam: what the first optimizer step leaves allocated (Adam's moments) vs the plan's optimizer term;
- step: the peak of the training step above the built state vs the plan's training phase (activations, logits
  and their gradient, the log-prob chunk).
Measured on the rank with the largest step peak (with PP: the heaviest stage, as the plan counts).
Last line: ``memory_plan: cases=<n> max_ratio=<r> min_ratio=<r>`` over every estimate / measured ratio.
``--gpu``: a Qwen3-0.6B-shaped student in bf16 at 4-8K tokens on one CUDA GPU, measured with the CUDA allocator's
statistics (needs megatron-core on the GPU machine; written without a GPU at hand, not run yet).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlad_megatron.testing.distributed import run_distributed  # noqa: E402
from rlad_megatron.testing.memory import tiny_arch_config  # noqa: E402

#: (name, tp, pp, sequence parallel, recompute, rows, seq, shape overrides); with PP, PP micro-batches
CASES: list[tuple[str, int, int, bool, str, int, int, dict]] = [
    ("tp1 none", 1, 1, False, "none", 4, 256, {}),
    ("tp1 selective", 1, 1, False, "selective", 4, 256, {}),
    ("tp1 full", 1, 1, False, "full", 4, 256, {}),
    ("tp1 none, 8 x 128", 1, 1, False, "none", 8, 128, {}),
    ("tp1 none, moe 8x2", 1, 1, False, "none", 4, 256,
     {"moe": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 192}}),
    ("tp2 sp none", 2, 1, True, "none", 4, 256, {}),
    ("tp2 sp full", 2, 1, True, "full", 4, 256, {}),
    ("pp2 none, 2 micro", 1, 2, False, "none", 4, 256, {}),
]
#: ``--gpu``: a Qwen3-0.6B-shaped student in bf16 on one CUDA GPU (not run yet: no GPU in the session that wrote it).
#: Without TE the attention keeps [rows, 16, s, s] scores per layer: 8K tokens in one row would plan ~130 GiB.
QWEN3_0P6B = dict(layers=28, hidden=1024, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=151936,
                  max_positions=40960)
GPU_CASES: list[tuple[str, int, int, bool, str, int, int, dict]] = [
    ("0.6b none 1 x 4096", 1, 1, False, "none", 1, 4096, QWEN3_0P6B),  # local attention: [s, s] scores
    ("0.6b full 1 x 8192", 1, 1, False, "full", 1, 8192, QWEN3_0P6B),
    ("0.6b none 4 x 2048", 1, 1, False, "none", 4, 2048, QWEN3_0P6B),
]


def _measure(cases: list[tuple], dtype: str = "float32") -> list[dict]:
    import torch

    from rlad_megatron.testing.memory import measure_learner

    out = []
    for _name, _tp, pp, sp, recompute, rows, seq, shape in cases:
        result = measure_learner(tiny_arch_config(**shape), rows=rows, seq=seq, recompute=recompute,
                                 sequence_parallel=sp, micro_batches=pp, params_dtype=getattr(torch, dtype))
        result.pop("grads")
        out.append(result)
    return out


def estimate(tp: int, sp: bool, recompute: str, rows: int, seq: int, shape: dict, pp: int = 1,
             dtype: str = "float32", gpu: bool = False) -> dict[str, int]:
    """The plan's numbers for one case: a GRPO run (no teacher, no engine on the GPU), fp32 on CPU by default; on a
    GPU the attention is fused when Transformer Engine is there and the log-prob chunk is the GPU's."""
    from rlad_megatron.config import (
        DataConfig, ModelConfig, ParallelConfig, RolloutConfig, RunConfig, TrainerConfig,
    )
    from rlad_megatron.config.loss import LossConfig
    from rlad_megatron.memory_plan import plan_memory
    from rlad_megatron.models.hf_config import arch_from_hf_config
    from rlad_megatron.placement import ModelShape

    config = RunConfig(model=ModelConfig(student="x", params_dtype=dtype), loss=LossConfig(algorithm="grpo"),
                       parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, sequence_parallel=sp,
                                               recompute=recompute),
                       rollout=RolloutConfig(max_new_tokens=seq // 2, placement="disaggregated"),
                       data=DataConfig(train_files=["x"], max_prompt_tokens=seq // 2),
                       trainer=TrainerConfig(micro_batch_size=rows))
    student = ModelShape.from_arch(arch_from_hf_config(tiny_arch_config(**shape)), "tiny")
    from rlad_megatron.models.builder import use_transformer_engine

    plan = plan_memory(config, student=student, dp=1, fused_attention=gpu and use_transformer_engine(),
                       runtime_reserve_gib=0, engine_runtime_gib=0,
                       chunk_elements=1 << 24 if gpu else 1 << 20)  # the log-prob kernel's chunk (fp32 elements)
    return {"state": plan.term("student weights").bytes + plan.term("student gradients (fp32 buffer)").bytes,
            "adam": plan.term("student optimizer (Adam)").bytes, "step": plan.phase_bytes("train")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="all", help="comma-separated case indices (default: all)")
    parser.add_argument("--gpu", action="store_true", help="the Qwen3-0.6B bf16 cases on one CUDA GPU")
    args = parser.parse_args()
    table = GPU_CASES if args.gpu else CASES
    dtype = "bfloat16" if args.gpu else "float32"
    chosen = table if args.cases == "all" else [table[int(i)] for i in args.cases.split(",")]
    measured: list[tuple] = []
    for tp, pp in sorted({(c[1], c[2]) for c in chosen}):
        group = [c for c in chosen if (c[1], c[2]) == (tp, pp)]
        per_rank = run_distributed(_measure, world_size=tp * pp, tp=tp, pp=pp, args=(group, dtype), timeout=900)
        for i, case in enumerate(group):  # the rank with the largest step peak (with PP: the heaviest stage)
            measured.append((case, max((rank[i] for rank in per_rank), key=lambda r: r["step_peak"])))
    ratios = []
    print(f"{'case':22s} {'part':6s} {'estimate MB':>12s} {'measured MB':>12s} {'ratio':>6s}")
    for (name, tp, pp, sp, recompute, rows, seq, shape), result in measured:
        est = estimate(tp, sp, recompute, rows, seq, shape, pp, dtype=dtype, gpu=args.gpu)
        # the first step also allocates the moments; the step peak is measured above the built state
        got = {"state": result["build"], "adam": result["step_retained"], "step": result["step_peak"]}
        for part in ("state", "adam", "step"):
            ratio = est[part] / got[part]
            ratios.append(ratio)
            print(f"{name:22s} {part:6s} {est[part] / 1e6:12.1f} {got[part] / 1e6:12.1f} {ratio:6.2f}")
    print(f"memory_plan: cases={len(measured)} max_ratio={max(ratios):.2f} min_ratio={min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
