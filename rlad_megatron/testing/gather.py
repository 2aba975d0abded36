"""Reassemble a TP/PP-sharded Megatron model's tensors into full, globally named tensors (for test comparisons)."""
from __future__ import annotations

import re

import torch
import torch.distributed as dist

_LAYER = re.compile(r"^(.*decoder\.layers\.)(\d+)(\..*)$")


def _global_name(model: torch.nn.Module, name: str) -> str:
    match = _LAYER.match(name)
    if not match:
        return name
    layers = model.decoder.layers if hasattr(model, "decoder") else model.module.decoder.layers
    global_index = layers[int(match.group(2))].layer_number - 1  # layer_number is global and 1-based
    return f"{match.group(1)}{global_index}{match.group(3)}"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    return model


def gather_full(model: torch.nn.Module, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """This pipeline stage's parameters (or their ``main_grad``/``grad``), TP shards concatenated along each
    parameter's ``partition_dim``. Layer indices are global. Collective over the tensor-parallel group."""
    from megatron.core import parallel_state as ps

    inner = _unwrap(model)
    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    out: dict[str, torch.Tensor] = {}
    for name, param in inner.named_parameters():
        if grads:
            tensor = getattr(param, "main_grad", None)
            if tensor is None:
                tensor = param.grad
            if tensor is None:
                continue
        else:
            tensor = param.data
        tensor = tensor.detach().float().contiguous()
        if tp > 1 and getattr(param, "tensor_model_parallel", False):
            parts = [torch.empty_like(tensor) for _ in range(tp)]
            dist.all_gather(parts, tensor, group=tp_group)
            if name.endswith("mlp.linear_fc1.weight") and inner.config.gated_linear_unit:
                # Each rank holds [gate_r; up_r] of the fused SwiGLU projection: regroup as [gate; up].
                halves = [p.chunk(2, dim=0) for p in parts]
                tensor = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
            else:
                tensor = torch.cat(parts, dim=param.partition_dim)
        out[_global_name(inner, name)] = tensor.clone()
    return out


def load_full(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Inverse of ``gather_full``: copy this rank's TP shard of each full, globally named tensor into the model."""
    from megatron.core import parallel_state as ps

    inner = _unwrap(model)
    tp = ps.get_tensor_model_parallel_world_size()
    tp_rank = ps.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, param in inner.named_parameters():
            tensor = full[_global_name(inner, name)]
            if tp > 1 and getattr(param, "tensor_model_parallel", False):
                if name.endswith("mlp.linear_fc1.weight") and inner.config.gated_linear_unit:
                    gate, up = tensor.chunk(2, dim=0)
                    tensor = torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
                else:
                    tensor = tensor.chunk(tp, dim=param.partition_dim)[tp_rank]
            param.copy_(tensor)
