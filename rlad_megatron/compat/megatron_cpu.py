"""Run stock megatron-core 0.16.1 on a CPU-only torch with gloo.

megatron-core assumes CUDA in a handful of places (measured: ``docs/megatron_on_cpu.md``):
``torch.cuda.current_device()`` and ``device="cuda"`` literals in attention, RoPE, schedules, optimizer, DDP buffers
and checkpointing; the CUDA RNG tracker and the activation-recompute RNG; ``.cuda()`` calls; ``param.type() ==
'torch.cuda.FloatTensor'`` checks in the optimizers; and gloo's ``scatter`` silently sending wrong data for
non-contiguous inputs. Those are patched here. What breaks because Transformer Engine and Apex are absent (the torch
norm refusing sequence parallel, the MoE router's TE GEMM name, the distributed optimizer's checkpoint bugs around
torch AdamW's ``step`` state) breaks the same way on a GPU without them: those fixes are
:mod:`rlad_megatron.compat.megatron_fallbacks`, applied by :func:`apply` here and, on GPUs, by
``parallel.initialize_model_parallel`` wherever megatron-core takes those paths.

Context parallelism needs no patch of its own: Megatron cuts the RoPE table per CP rank in
``rope_utils.get_pos_emb_on_this_cp_rank`` with ``torch.tensor(..., pin_memory=True).cuda()``, which the torch proxy
(``pin_memory`` dropped) and ``tensor_cuda`` already cover (``tests/distributed/test_context_parallel.py``);
the attention that Megatron's local spec lacks under CP is ours (``rlad_megatron.models.cp_attention``).

Every CPU patch lives here and nowhere else. It is applied only when CUDA is absent (``apply()`` is a no-op on a
GPU machine) and it refuses any megatron-core version but the one it was written for. Each patch has a test in
``tests/distributed/test_compat_megatron_cpu.py`` that shows, with the patch undone, why it is needed.

How: the ``torch`` name inside every ``megatron.core`` module (already imported or imported later) is swapped for a
thin proxy whose factories map a CUDA device to the CPU and whose ``torch.cuda`` answers for the CPU. Only
megatron's own modules see the proxy; the rest of the process (vLLM, transformers, our code) sees plain torch. Two
patches cannot be scoped so: ``Tensor.cuda`` becomes the identity (on a CPU-only build it could only raise), and
``Tensor.type()`` answers with CUDA names only while megatron's optimizer type checks run.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any, Callable

import torch

from rlad_megatron.compat import megatron_fallbacks
from rlad_megatron.compat.megatron_fallbacks import (  # noqa: F401  (re-exported: one version guard for both)
    SUPPORTED_MEGATRON_CORE, check_megatron_version,
)

_applied = False
_patched_modules: set[str] = set()


def cuda_is_available() -> bool:
    return torch.cuda.is_available()


def is_applied() -> bool:
    return _applied


# ---------------------------------------------------------------------------------------------------------------
# The torch proxy seen by megatron.core modules
# ---------------------------------------------------------------------------------------------------------------


def _is_cuda_device(device: Any) -> bool:
    if device is None:
        return False
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, int):  # an int device is a CUDA ordinal
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _cpu_factory(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)
        return fn(*args, **kwargs)

    return wrapper


_FACTORIES = (
    "zeros", "ones", "empty", "full", "tensor", "arange", "as_tensor", "rand", "randn", "randint",
    "zeros_like", "ones_like", "empty_like", "full_like", "empty_strided", "linspace", "eye",
)


class _CpuCudaNamespace(types.SimpleNamespace):
    """``torch.cuda`` as megatron sees it on a CPU machine: the "current device" is the CPU and the "device RNG"
    is the CPU generator (dropout on CPU draws from it)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


def _make_cuda_namespace() -> _CpuCudaNamespace:
    return _CpuCudaNamespace(
        current_device=lambda: torch.device("cpu"),
        synchronize=lambda *a, **k: None,
        empty_cache=lambda *a, **k: None,
        device_count=lambda: 1,
        set_device=lambda *a, **k: None,
        get_rng_state=lambda *a, **k: torch.get_rng_state(),
        set_rng_state=lambda state, *a, **k: torch.set_rng_state(state),
        manual_seed=lambda seed: torch.manual_seed(seed),
        manual_seed_all=lambda seed: torch.manual_seed(seed),
        current_stream=lambda *a, **k: None,
        default_stream=lambda *a, **k: None,
        stream=lambda *a, **k: contextlib.nullcontext(),
    )


def _contiguous_scatter(tensor, scatter_list=None, src=None, group=None, async_op=False, **kwargs):
    # gloo on torch 2.13 sends wrong data for non-contiguous entries of scatter_list (notes: "gloo bug").
    if scatter_list is not None:
        scatter_list = [t.contiguous() for t in scatter_list]
    return torch.distributed.scatter(tensor, scatter_list, src=src, group=group, async_op=async_op, **kwargs)


class _DistributedNamespace(types.SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        return getattr(torch.distributed, name)


class _CpuTorchProxy(types.ModuleType):
    """Stands in for the ``torch`` module inside megatron.core modules."""

    def __init__(self, contiguous_scatter: bool = True) -> None:
        super().__init__("torch")
        for name in _FACTORIES:
            setattr(self, name, _cpu_factory(getattr(torch, name)))
        self.cuda = _make_cuda_namespace()
        if contiguous_scatter:
            self.distributed = _DistributedNamespace(scatter=_contiguous_scatter)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


_PROXY: _CpuTorchProxy | None = None


def _patch_module_torch(module: types.ModuleType) -> None:
    if getattr(module, "torch", None) is torch:
        module.torch = _PROXY
    _patched_modules.add(module.__name__)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Gives megatron.core modules imported after ``apply()`` the proxy too."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("megatron.core"):
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                original_exec = spec.loader.exec_module

                def exec_module(module, _exec=original_exec):
                    _exec(module)
                    _patch_module_torch(module)

                spec.loader = copy.copy(spec.loader)
                spec.loader.exec_module = exec_module
                return spec
        return None


# ---------------------------------------------------------------------------------------------------------------
# Individual patches
# ---------------------------------------------------------------------------------------------------------------


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    state = torch.get_rng_state()
    return state.clone() if clone else state


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _patch_rng() -> None:
    """The model-parallel RNG tracker (dropout forks, activation recompute) on the CPU generator."""
    from megatron.core.tensor_parallel import random as tp_random  # lazy: megatron-core is heavy (seconds)

    tp_random._get_cuda_rng_state = _cpu_get_rng_state
    tp_random._set_cuda_rng_state = _cpu_set_rng_state


def _identity_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}
_original_tensor_type = torch.Tensor.type


def _cuda_named_type(self: torch.Tensor, *args: Any, **kwargs: Any):
    result = _original_tensor_type(self, *args, **kwargs)
    if not args and not kwargs:
        return _CUDA_TYPE_NAMES.get(result, result)
    return result


@contextlib.contextmanager
def _cuda_type_names():
    torch.Tensor.type = _cuda_named_type
    try:
        yield
    finally:
        torch.Tensor.type = _original_tensor_type


def _with_cuda_type_names(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        with _cuda_type_names():
            return fn(*args, **kwargs)

    wrapper.__rlad_cpu_patched__ = True
    return wrapper


def _patch_type_checks() -> None:
    """megatron's optimizers accept only ``torch.cuda.*Tensor`` parameters (``param.type()`` string checks)."""
    # lazy: megatron-core is heavy (seconds)
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    # The checks run while the optimizers are built (DistributedOptimizer.__init__ calls
    # _build_model_and_main_param_groups) and in clip_grads' zero counting.
    dist_opt = distrib_optimizer.DistributedOptimizer
    dist_opt.__init__ = _with_cuda_type_names(dist_opt.__init__)
    f16 = optimizer.Float16OptimizerWithFloat16Params
    f16.__init__ = _with_cuda_type_names(f16.__init__)
    patched_clip = _with_cuda_type_names(clip_grads.clip_grad_by_total_norm_fp32)
    clip_grads.clip_grad_by_total_norm_fp32 = patched_clip
    optimizer.clip_grad_by_total_norm_fp32 = patched_clip  # imported by name there


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


# Imported up front so that their module-level ``torch`` is swapped now (later imports go through the finder).
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.utils",
    "megatron.core.tensor_parallel",
    "megatron.core.tensor_parallel.random",
    "megatron.core.tensor_parallel.layers",
    "megatron.core.tensor_parallel.mappings",
    "megatron.core.tensor_parallel.data",
    "megatron.core.tensor_parallel.utils",
    "megatron.core.transformer.utils",
    "megatron.core.transformer.module",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.dot_product_attention",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.torch_norm",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.common.embeddings.rotary_pos_embedding",
    "megatron.core.models.common.language_module.language_module",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.optimizer",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.distributed.finalize_model_grads",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
)


#: The CPU patches, then the TE-less fallbacks' fixes that ``apply`` also applies (``megatron_fallbacks.FALLBACKS``).
PATCHES = ("torch_proxy", "contiguous_scatter", "tensor_cuda", "rng", "type_checks", *megatron_fallbacks.FALLBACKS)


def apply(force: bool = False, skip: frozenset[str] | set[str] = frozenset()) -> bool:
    """Make megatron-core usable on this CPU-only process. Returns True if the patches are (now) active.

    A no-op when CUDA is available (unless ``force``). Idempotent. Call it before building models. ``skip`` leaves
    out named patches (see ``PATCHES``); it exists for the tests that show why each patch is needed.
    """
    unknown = set(skip) - set(PATCHES)
    if unknown:
        raise ValueError(f"unknown patch names {sorted(unknown)}; known: {PATCHES}")
    global _applied, _PROXY
    if _applied:
        return True
    if cuda_is_available() and not force:
        return False
    check_megatron_version()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Apex/TE not installed, falling back" is expected on CPU
        for name in _MEGATRON_MODULES:
            importlib.import_module(name)
    if "torch_proxy" not in skip:
        _PROXY = _CpuTorchProxy(contiguous_scatter="contiguous_scatter" not in skip)
        for name, module in list(sys.modules.items()):
            if name.startswith("megatron.core") and module is not None:
                _patch_module_torch(module)
        if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _PatchOnImport())
    if "tensor_cuda" not in skip:
        torch.Tensor.cuda = _identity_cuda
    if "rng" not in skip:
        _patch_rng()
    if "type_checks" not in skip:
        _patch_type_checks()
    megatron_fallbacks.apply(skip=set(skip) & set(megatron_fallbacks.FALLBACKS))
    _applied = True
    return True
