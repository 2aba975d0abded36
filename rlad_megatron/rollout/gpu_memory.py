"""How much of a GPU a vLLM engine may take when it starts: vLLM 0.32 refuses to start unless its
``gpu_memory_utilization`` share of the GPU is free, then fills that share. Pure arithmetic on the free and total
memory, which the caller measures (the trainer's engine settings, the evaluator's defaults)."""
from __future__ import annotations

GIB = 1 << 30

COLOCATED_MARGIN_FRACTION = 0.08
"""Of a GPU's memory, kept out of the engine's share when the learner shares the GPU: the learner's activations,
gradients being reduced and the allocator's fragmentation grow after the engine is built. With sleep mode the
KV cache is gone while the learner trains, so the margin only has to cover what the learner holds at engine
start growing to its step peak; without it, set rollout.gpu_memory_utilization from the memory plan."""

COLOCATED_MARGIN_MIN_BYTES = 2 * GIB
"""The margin's floor (CUDA context of the engine's kernels, NCCL buffers of vLLM's groups, CUDA graph pools)."""


def colocated_memory_fraction(free_bytes: int, total_bytes: int, *, learner_shares_gpu: bool) -> float:
    """The ``gpu_memory_utilization`` of an engine built now on a GPU with ``free_bytes`` of ``total_bytes`` free.

    vLLM 0.32 refuses to start unless ``gpu_memory_utilization * total`` is free, and then fills that share with
    its weights, CUDA graphs and KV cache. Alone on the GPU: vLLM's own default, 0.92 (or what is free, if less).
    Shared with the learner (already on the GPU): what is free minus a margin
    (``max(COLOCATED_MARGIN_MIN_BYTES, COLOCATED_MARGIN_FRACTION * total)``) for the learner's growth.
    """
    if total_bytes <= 0 or not 0 <= free_bytes <= total_bytes:
        raise ValueError(f"colocated_memory_fraction: free={free_bytes} and total={total_bytes} bytes are inconsistent")
    margin = max(COLOCATED_MARGIN_MIN_BYTES, int(COLOCATED_MARGIN_FRACTION * total_bytes))
    if not learner_shares_gpu:
        margin = min(margin, int(0.02 * total_bytes))  # only measurement noise between now and vLLM's own check
        return round(min(0.92, (free_bytes - margin) / total_bytes), 4)
    share = (free_bytes - margin) / total_bytes
    if share < 0.05:
        raise RuntimeError(
            f"the colocated rollout engine would get {share:.1%} of the GPU ({free_bytes / GIB:.1f} GiB free of "
            f"{total_bytes / GIB:.1f} GiB, {margin / GIB:.1f} GiB kept for the learner): free memory first "
            "(rollout.sleep_level, teacher.offload, a smaller micro-batch, more tensor parallelism) or place the "
            "engine on its own GPUs (rollout.placement=disaggregated)"
        )
    return round(share, 4)
