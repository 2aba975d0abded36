"""Fixes for megatron-core 0.16.1's code paths without Transformer Engine and Apex, on any device.

Without TE and Apex megatron-core falls back to plain torch modules, and three of those fallbacks are broken:

- ``distopt_checkpoint``: the optimizer is ``torch.optim.AdamW`` (``megatron.core.optimizer.Adam``, chosen in
  ``megatron/core/optimizer/__init__.py``'s try/except ImportError), whose per-param ``step`` state the distributed
  optimizer's checkpoint loading does not expect: ``_set_main_param_and_optimizer_states`` copies every key of the
  live state, ``step`` included, from tensors that ``load_parameter_state_from_fully_reshardable`` gave no ``step``
  (KeyError), and ``load_state_dict`` (``if not HAVE_APEX_OR_TE``) gives every param state one shared ``step``;
- ``moe_router_gemm``: ``moe_utils.RouterGatingLinearFunction`` tests ``te_general_gemm is not None``, a name bound
  only when TE imports (NameError in every MoE forward);
- ``norm_sequence_parallel``: the local layer spec's norm is ``WrappedTorchNorm`` (``gpt_layer_specs.LNImpl``), which
  asserts ``not sequence_parallel``.

A GPU machine with a plain PyTorch image (no TE, no Apex) takes these paths exactly as a CPU machine does, so each
fix is applied where megatron-core takes its path (:func:`fallback_paths`, read from what megatron-core imported),
not where CUDA is absent. The CPU-only patches live in :mod:`rlad_megatron.compat.megatron_cpu`, which applies
these too. Each fix refuses any megatron-core but the one it was written for; its test
(``tests/distributed/test_compat_megatron_cpu.py``, ``tests/distributed/test_dist_checkpoint.py``) shows the
failure with the fix left out, so an upstream release that fixes one makes its test fail.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

SUPPORTED_MEGATRON_CORE = "0.16.1"

FALLBACKS = ("norm_sequence_parallel", "distopt_checkpoint", "moe_router_gemm")

_applied: frozenset[str] | None = None


def check_megatron_version() -> str:
    from megatron.core import package_info  # lazy: megatron-core is heavy (seconds)

    version = package_info.__version__
    if version != SUPPORTED_MEGATRON_CORE:
        raise RuntimeError(
            f"rlad_megatron.compat was written for megatron-core {SUPPORTED_MEGATRON_CORE}, but {version} is "
            f"installed. Its patches may be wrong or unnecessary there: install "
            f"megatron-core=={SUPPORTED_MEGATRON_CORE} (see pyproject.toml), or re-measure every patch with "
            f"tests/distributed/test_compat_megatron_cpu.py and update SUPPORTED_MEGATRON_CORE."
        )
    return version


def fallback_paths() -> dict[str, bool]:
    """Which of megatron-core's TE-less fallbacks this process takes, by fallback name (``FALLBACKS``).

    Read from the names megatron-core bound when it was imported (its own try/except ImportError choices), so it
    answers the same on a CPU machine and on a GPU machine without TE/Apex. An attribute this reads that upstream
    renamed raises AttributeError here, loudly, instead of silently skipping a fix."""
    from megatron.core import optimizer as mcore_optimizer  # lazy: megatron-core is heavy (seconds)
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.optimizer import distrib_optimizer
    from megatron.core.transformer import torch_norm
    from megatron.core.transformer.moe import moe_utils

    return {
        # the optimizer built is torch AdamW (its per-param ``step`` state), or the distributed optimizer's own
        # TE/Apex switch is off (it then hands one shared ``step`` to every state on load)
        "distopt_checkpoint": mcore_optimizer.Adam is torch.optim.AdamW or not distrib_optimizer.HAVE_APEX_OR_TE,
        "moe_router_gemm": not moe_utils.HAVE_TE,
        "norm_sequence_parallel": gpt_layer_specs.LNImpl is torch_norm.WrappedTorchNorm,
    }


def applied() -> frozenset[str]:
    """The fixes applied in this process (empty before :func:`apply`)."""
    return _applied or frozenset()


def apply(skip: frozenset[str] | set[str] = frozenset()) -> frozenset[str]:
    """Apply the fix of every fallback this process takes (:func:`fallback_paths`), except those in ``skip`` (for
    the tests that show why each is needed). Idempotent: the first call decides. Returns the fixes applied."""
    global _applied
    unknown = set(skip) - set(FALLBACKS)
    if unknown:
        raise ValueError(f"unknown fallback names {sorted(unknown)}; known: {FALLBACKS}")
    if _applied is not None:
        return _applied

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Apex/TE not installed, falling back": expected here
        taken = {name for name, on in fallback_paths().items() if on and name not in skip}
    if taken:
        check_megatron_version()
    for name in sorted(taken):
        _FIXES[name]()
    _applied = frozenset(taken)
    return _applied


# ---------------------------------------------------------------------------------------------------------------
# The fixes
# ---------------------------------------------------------------------------------------------------------------


def _fix_torch_norm_sequence_parallel() -> None:
    """The torch norm asserts ``not sequence_parallel``. Its maths do not depend on it; what sequence parallel needs
    is that the norm's gradients, partial per rank, are all-reduced over TP: the fused norms flag their parameters
    ``sequence_parallel = True`` for ``finalize_model_grads``, and so do we."""
    from megatron.core.transformer import torch_norm  # lazy: megatron-core is heavy (seconds)

    original_new = torch_norm.WrappedTorchNorm.__new__
    if getattr(original_new, "__rlad_patched__", False):
        return

    def __new__(cls, config, hidden_size, eps=1e-5, persist_layer_norm=False, zero_centered_gamma=False,
                normalization="LayerNorm"):
        sequence_parallel = config.sequence_parallel
        if sequence_parallel:
            config = copy.copy(config)
            config.sequence_parallel = False
        norm = original_new(cls, config, hidden_size, eps, persist_layer_norm, zero_centered_gamma, normalization)
        for param in norm.parameters():
            param.sequence_parallel = sequence_parallel
        return norm

    __new__.__rlad_patched__ = True
    torch_norm.WrappedTorchNorm.__new__ = __new__


def _fix_distributed_optimizer_checkpoint() -> None:
    """Two of the three torch-AdamW ``step`` bugs of DistributedOptimizer checkpoint loading (the third, states
    not initialised before loading, is :func:`prepare_optimizer_for_load`).

    1. ``_set_main_param_and_optimizer_states`` copies every key of the live state, ``step`` included, from a source
       that never has ``step`` (KeyError), and copies into leaf fp32 main params outside ``no_grad``.
    2. ``load_state_dict`` hands one shared ``step`` tensor to every param state; AdamW increments it in place once
       per param, so bias correction goes wrong after the first resumed step.
    """
    from megatron.core.optimizer import distrib_optimizer  # lazy: megatron-core is heavy (seconds)

    dist_opt = distrib_optimizer.DistributedOptimizer
    original_set = dist_opt._set_main_param_and_optimizer_states
    original_load = dist_opt.load_state_dict
    if getattr(original_load, "__rlad_patched__", False):
        return

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original_set(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        destinations = {"param": main_param, **self.optimizer.state[main_param]}
        with torch.no_grad():
            for key, destination in destinations.items():
                if key in tensors:
                    destination.copy_(tensors[key])

    def load_state_dict(self, state_dict):
        original_load(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].detach().clone()

    load_state_dict.__rlad_patched__ = True
    dist_opt._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
    dist_opt.load_state_dict = load_state_dict


def _fix_moe_router_gemm() -> None:
    """Binding ``te_general_gemm`` to None selects the plain torch GEMM path that is already there."""
    from megatron.core.transformer.moe import moe_utils  # lazy: megatron-core is heavy (seconds)

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


_FIXES = {
    "norm_sequence_parallel": _fix_torch_norm_sequence_parallel,
    "distopt_checkpoint": _fix_distributed_optimizer_checkpoint,
    "moe_router_gemm": _fix_moe_router_gemm,
}


def prepare_optimizer_for_load(optimizer: Any) -> None:
    """Give every optimizer state its entries before a distributed-optimizer checkpoint is loaded into it
    (megatron's own ``_init_optimizer_states_with_dummy_values``; torch AdamW has no state before its first step).

    Without this ``DistributedOptimizer.state_dict()`` asserts on the empty ``step`` set. Called by every
    checkpoint load (``learner/checkpoint.py``); a no-op for states that already exist.
    """
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    for inner in chained:
        init = getattr(inner, "_init_optimizer_states_with_dummy_values", None)
        if init is not None and len(getattr(inner.optimizer, "state", {})) == 0:
            init()
