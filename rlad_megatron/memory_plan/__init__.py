"""The memory plan: each GPU's peak memory, by component, before a run is launched (docs/memory_plan.md).

    plan = plan_memory(config, student=shape, teacher=teacher_shape, dp=8, gpu="h200")
    print(plan.describe())            # one line per component, the peak phase, and whether it fits
    plan.check()                      # MemoryPlanError naming the largest terms and settings that would fit

``arithmetic``: parameter counts, shards, activations, logits; ``plan``: the terms of a run and the verdict;
``advice``: settings that would make it fit.
"""
from rlad_megatron.memory_plan.arithmetic import (
    DeviceParams, ParamCounts, device_params, fused_logits_bytes, layer_activation_bytes, logits_bytes, padded_vocab,
    param_counts, stage_layers, training_activation_bytes,
)
from rlad_megatron.memory_plan.plan import (
    DTYPE_BYTES, ENGINE_RUNTIME_GIB, ENGINE_TERMS, FUSED_TILE_ELEMENTS, GIB, GPU_MEMORY_GIB, LOGPROB_CHUNK_ELEMENTS,
    RUNTIME_RESERVE_GIB, MemoryPlan, MemoryPlanError, Term, engine_bytes,
    engine_memory_utilization, forward_tokens, gpu_memory_gib, plan_memory, train_tokens,
)

__all__ = [
    "DTYPE_BYTES", "ENGINE_RUNTIME_GIB", "ENGINE_TERMS", "FUSED_TILE_ELEMENTS", "GIB", "GPU_MEMORY_GIB",
    "LOGPROB_CHUNK_ELEMENTS", "RUNTIME_RESERVE_GIB", "DeviceParams", "MemoryPlan", "MemoryPlanError", "ParamCounts",
    "Term", "device_params", "engine_bytes", "engine_memory_utilization", "forward_tokens", "fused_logits_bytes",
    "gpu_memory_gib", "layer_activation_bytes", "logits_bytes", "padded_vocab", "param_counts", "plan_memory",
    "stage_layers", "train_tokens", "training_activation_bytes",
]
