"""Which tensor/pipeline layouts a model allows, with errors that list the valid choices.

Tensor parallelism beyond the KV heads (TP > num_key_value_heads) uses megatron-core 0.16.1's own support
(``Attention.get_query_key_value_tensors``): the fused QKV weight stays one tensor split evenly by rows, so a query
group's ``[q heads; k; v]`` block is cut across ``TP / num_kv_heads`` ranks; after the QKV projection the ranks
all-gather the activations, and each keeps its group's K/V (the KV head is replicated in activations, never in the
weights) and its own share of the group's query heads. So the weights, their gradients and a dist checkpoint are
the same tensors at every TP, and an export or weight sync sends each KV head exactly once.
Requirements (megatron's): TP divides num_attention_heads, and num_kv_heads and TP divide one another.

Uneven pipeline stages: megatron's ``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``;
the layers left over are split evenly over the middle stages.
"""
from __future__ import annotations

from typing import Any


def kv_replicas(num_kv_heads: int, tp: int) -> int:
    """How many TP ranks share one KV head (1 when TP <= num_kv_heads)."""
    return tp // num_kv_heads if tp > num_kv_heads else 1


def tensor_parallel_problem(num_heads: int, num_kv_heads: int, head_dim: int, tp: int) -> str | None:
    """Why ``tp`` does not fit the attention heads, or None when it does."""
    if tp < 1:
        return f"tensor parallel size must be >= 1, got {tp}"
    if num_heads % tp:
        return f"tensor parallel size {tp} must divide num_attention_heads={num_heads}"
    if num_kv_heads % tp and tp % num_kv_heads:
        return (f"tensor parallel size {tp} and num_key_value_heads={num_kv_heads} must divide one another "
                "(TP above the KV heads replicates each KV head over TP/num_key_value_heads ranks)")
    fused_rows = (num_heads // num_kv_heads + 2) * head_dim * num_kv_heads
    if fused_rows % tp:
        return f"tensor parallel size {tp} must divide the fused QKV rows {fused_rows}"
    return None


def valid_tensor_parallel_sizes(num_heads: int, num_kv_heads: int, head_dim: int) -> list[int]:
    return [t for t in range(1, num_heads + 1)
            if tensor_parallel_problem(num_heads, num_kv_heads, head_dim, t) is None]


def check_tensor_parallel(arch: Any, tp: int) -> None:
    """Raise ``ValueError`` naming the valid TP sizes unless ``tp`` fits ``arch`` (a ModelArch-like object)."""
    problem = tensor_parallel_problem(arch.num_heads, arch.num_kv_heads, arch.head_dim, tp)
    if problem:
        choices = valid_tensor_parallel_sizes(arch.num_heads, arch.num_kv_heads, arch.head_dim)
        raise ValueError(f"{problem}: choose tp among {choices}")


def _split(num_layers: int, pp: int, first: int | None, last: int | None) -> list[int] | None:
    """Layers per stage, or None when the choice does not split (megatron's rule: the layers not in an explicit
    first/last stage are split evenly, and non-zero, over the remaining stages)."""
    if pp == 1:
        return [num_layers] if first in (None, num_layers) and last in (None, num_layers) else None
    if any(v is not None and not 1 <= v < num_layers for v in (first, last)):
        return None
    middle = pp - (first is not None) - (last is not None)
    rest = num_layers - (first or 0) - (last or 0)
    if middle == 0:
        return [first, last] if rest == 0 else None  # type: ignore[list-item]
    if rest <= 0 or rest % middle:
        return None
    return ([first] if first is not None else []) + [rest // middle] * middle + ([last] if last is not None else [])


def pipeline_stage_layers(num_layers: int, pp: int, first: int | None = None,
                          last: int | None = None) -> list[int]:
    """Layers per pipeline stage for ``pp`` stages with optional first/last stage layer counts. Raises
    ``ValueError`` listing the valid choices."""
    if pp < 1:
        raise ValueError(f"pipeline parallel size must be >= 1, got {pp}")
    stages = _split(num_layers, pp, first, last)
    if stages is None:
        raise ValueError(_uneven_message(num_layers, pp, first, last))
    return stages


def valid_first_last(num_layers: int, pp: int) -> list[tuple[int | None, int | None]]:
    """Every (first, last) choice that splits ``num_layers`` into ``pp`` stages (None: an even-sized stage), the
    most balanced first."""
    options = [None, *range(1, num_layers)]
    found = [(f, l, st) for f in options for l in options if (st := _split(num_layers, pp, f, l)) is not None]
    found.sort(key=lambda x: (max(x[2]) - min(x[2]), max(x[2])))  # most balanced first
    return [(f, l) for f, l, _ in found]


def _uneven_message(num_layers: int, pp: int, first: int | None, last: int | None) -> str:
    choices = valid_first_last(num_layers, pp)
    shown = ", ".join(f"first={f} last={l}" for f, l in choices[:6]) or "none (use fewer stages)"
    more = f" (and {len(choices) - 6} less balanced ones)" if len(choices) > 6 else ""
    if first is None and last is None:
        head = f"pipeline parallel size {pp} must divide num_hidden_layers={num_layers}"
    else:
        head = (f"pipeline parallel size {pp} cannot split num_hidden_layers={num_layers} with first-stage layers "
                f"{first} and last-stage layers {last}")
    return (f"{head} (stages other than an explicit first/last one get equal, non-zero layer counts): set the "
            f"first/last stage layer counts (parallel.first_stage_layers / parallel.last_stage_layers, convert "
            f"--first-stage-layers / --last-stage-layers); valid choices are {shown}{more} (None: an even stage)")


def check_pipeline_layout(num_layers: int, pp: int, first: int | None = None, last: int | None = None) -> list[int]:
    """Validate a PP layout (even when first/last are None) and return the layers per stage."""
    return pipeline_stage_layers(num_layers, pp, first, last)


def stage_overrides(first: int | None, last: int | None) -> dict[str, int]:
    """The ``TransformerConfig`` fields for first/last pipeline stage layer counts (empty when both are None)."""
    out = {}
    if first is not None:
        out["num_layers_in_first_pipeline_stage"] = first
    if last is not None:
        out["num_layers_in_last_pipeline_stage"] = last
    return out
