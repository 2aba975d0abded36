"""THE table between Megatron GPTModel parameters and Hugging Face tensors (Llama / Qwen2 / Qwen3), with the layout
conversions. The loader, the exporter and the weight sync to vLLM all use it; nothing else knows HF names.

A :class:`HFGroup` is one Megatron parameter and the HF tensors it is made of:

    kind       Megatron tensor (TP=1)                         HF tensors               TP split (rank r of t)
    ---------  ---------------------------------------------  -----------------------  ------------------------------
    qkv        [ng*(hpg+2)*hd, h]: per query group g, rows     q_proj [nh*hd, h],        groups [r*ng/t, (r+1)*ng/t):
               [q heads of g; k_g; v_g]  (bias: same rows)    k_proj, v_proj [ng*hd,h]  one contiguous row block
    gate_up    [2f, h] = [gate; up]                           gate_proj, up_proj [f,h]  [gate rows r; up rows r]
    column     [out, in]                                      one                       rows r
    row        [out, in]                                      one                       columns r
    vocab      [V_padded, h], rows >= vocab_size are zero     one [vocab_size, h]       rows r of the padded tensor
    replicated norms                                          one                       not split

(ng = num_kv_heads, hpg = heads per group, hd = head_dim, f = intermediate_size.) With TP > ng (megatron's KV
replication, see :mod:`rlad_megatron.models.layout`) the qkv rows are still split evenly: rank r holds part
``r % (t/ng)`` of query group ``r // (t/ng)``; the gathered tensor is the same at every TP. Megatron names are relative to a
model chunk (``decoder.layers.<local i>...``); a layer's global index comes from the layer module's
``layer_number`` (1-based, includes the pipeline offset), so any PP / virtual-PP layout works. With tied embeddings
the last stage's ``output_layer.weight`` (PP > 1) is a copy of ``embed_tokens``: loaded, never exported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlad_megatron.fp8 import dequantized
from rlad_megatron.models.hf_config import ModelArch
from rlad_megatron.models.layout import kv_replicas

TP_DIM: dict[str, int | None] = {
    "qkv": 0, "gate_up": 0, "column": 0, "vocab": 0, "row": 1, "replicated": None,
    # routed experts are not tensor-parallel (expert TP = 1): expert parallelism places whole experts
    "expert_gate_up": None, "expert_down": None,
}

# (megatron suffix inside decoder.layers.<i>, alternative name under the TE spec or None, kind, HF suffixes)
_LAYER_TABLE: tuple[tuple[str, str | None, str, tuple[str, ...]], ...] = (
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight", "replicated",
     ("input_layernorm.weight",)),
    ("self_attention.linear_qkv.weight", None, "qkv",
     ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")),
    ("self_attention.linear_qkv.bias", None, "qkv",
     ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")),
    ("self_attention.q_layernorm.weight", None, "replicated", ("self_attn.q_norm.weight",)),
    ("self_attention.k_layernorm.weight", None, "replicated", ("self_attn.k_norm.weight",)),
    ("self_attention.linear_proj.weight", None, "row", ("self_attn.o_proj.weight",)),
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", "replicated",
     ("post_attention_layernorm.weight",)),
    ("mlp.linear_fc1.weight", None, "gate_up", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    ("mlp.linear_fc2.weight", None, "row", ("mlp.down_proj.weight",)),
)
_DENSE_MLP = ("mlp.linear_fc1.weight", "mlp.linear_fc2.weight")
# MoE layers (Qwen2-MoE / Qwen3-MoE) replace the dense MLP: "{e}" is the expert (local index in the Megatron name,
# global index in the HF name and the group key; see local_params).
_MOE_TABLE: tuple[tuple[str, str | None, str, tuple[str, ...]], ...] = (
    ("mlp.router.weight", None, "replicated", ("mlp.gate.weight",)),
    ("mlp.experts.local_experts.{e}.linear_fc1.weight", None, "expert_gate_up",
     ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
    ("mlp.experts.local_experts.{e}.linear_fc2.weight", None, "expert_down", ("mlp.experts.{e}.down_proj.weight",)),
)
_SHARED_EXPERT_TABLE: tuple[tuple[str, str | None, str, tuple[str, ...]], ...] = (
    ("mlp.shared_experts.linear_fc1.weight", None, "gate_up",
     ("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight")),
    ("mlp.shared_experts.linear_fc2.weight", None, "row", ("mlp.shared_expert.down_proj.weight",)),
    ("mlp.shared_experts.gate_weight", None, "replicated", ("mlp.shared_expert_gate.weight",)),
)


@dataclass(frozen=True)
class HFGroup:
    """One Megatron parameter <-> its HF tensors. ``key`` is stable and rank-independent (e.g. ``layers.3.qkv_w``)."""

    key: str
    kind: str
    hf_names: tuple[str, ...]
    layer: int | None  # global 0-based layer, None for embeddings / final norm / head
    expert: int | None = None  # global expert index of a routed expert's weight (held by one EP rank)

    @property
    def tp_dim(self) -> int | None:
        return TP_DIM[self.kind]


@dataclass(frozen=True)
class LocalParam:
    """A parameter of one model chunk on this rank and the group it holds a shard of."""

    megatron_name: str
    group: HFGroup
    exported: bool = True  # False for the tied output-layer copy on the last stage


def _layer_entries(arch: ModelArch):
    """The table rows of one layer of ``arch``; MoE rows keep their "{e}" placeholder."""
    for meg, te_name, kind, hf in _LAYER_TABLE:
        if meg.endswith("linear_qkv.bias") and not arch.qkv_bias:
            continue
        if "_layernorm" in meg and meg.startswith("self_attention.") and not arch.qk_norm:
            continue
        if arch.is_moe and meg in _DENSE_MLP:
            continue
        if arch.is_moe and meg == "pre_mlp_layernorm.weight":
            te_name = None  # MoE layers keep a separate norm under TE too
        yield meg, te_name, kind, hf
    if arch.is_moe:
        yield from _MOE_TABLE
        if arch.shared_expert_intermediate_size:
            yield from _SHARED_EXPERT_TABLE


def _expand(meg: str, hf: tuple[str, ...], expert: int) -> tuple[str, tuple[str, ...]]:
    return meg, tuple(n.replace("{e}", str(expert)) for n in hf)


_MEMO: dict[tuple[str, int], tuple[ModelArch, object]] = {}


def _memo(kind: str, arch: ModelArch, build):
    """Per-arch cache (a MoE has ~10^4 groups and the loader asks per tensor); keyed by identity, arch kept alive."""
    hit = _MEMO.get((kind, id(arch)))
    if hit is None or hit[0] is not arch:
        hit = _MEMO[(kind, id(arch))] = (arch, build(arch))
    return hit[1]


def hf_groups(arch: ModelArch) -> list[HFGroup]:
    """Every HF tensor group of ``arch`` in the canonical export order (embeddings, layers, final norm, head)."""
    return list(_memo("groups", arch, _hf_groups))


def _hf_groups(arch: ModelArch) -> list[HFGroup]:
    groups = [HFGroup("embedding", "vocab", ("model.embed_tokens.weight",), None)]
    for layer in range(arch.num_layers):
        for meg, _, kind, hf in _layer_entries(arch):
            experts = range(arch.num_experts) if "{e}" in meg else [None]
            for e in experts:
                names = tuple(f"model.layers.{layer}.{n}".replace("{e}", str(e)) for n in hf)
                key = f"layers.{layer}.{meg}".replace("{e}", str(e))
                groups.append(HFGroup(key, kind, names, layer, e))
    groups.append(HFGroup("final_norm", "replicated", ("model.norm.weight",), None))
    if not arch.tie_word_embeddings:
        groups.append(HFGroup("output_layer", "vocab", ("lm_head.weight",), None))
    return groups


def hf_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """The expected shape of every HF tensor of ``arch`` (what the checkpoint must contain)."""
    return dict(_memo("shapes", arch, _hf_shapes))


def _hf_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    h, hd, f, v = arch.hidden_size, arch.head_dim, arch.intermediate_size, arch.vocab_size
    q, kv = arch.num_heads * hd, arch.num_kv_heads * hd
    per_layer = {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (hd,), "self_attn.k_norm.weight": (hd,), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
    }
    if arch.is_moe:
        fe, fs = arch.moe_intermediate_size, arch.shared_expert_intermediate_size
        per_layer.update({
            "mlp.gate.weight": (arch.num_experts, h),
            "mlp.shared_expert.gate_proj.weight": (fs, h), "mlp.shared_expert.up_proj.weight": (fs, h),
            "mlp.shared_expert.down_proj.weight": (h, fs), "mlp.shared_expert_gate.weight": (1, h),
        })
        for e in range(arch.num_experts):
            per_layer.update({f"mlp.experts.{e}.gate_proj.weight": (fe, h), f"mlp.experts.{e}.up_proj.weight": (fe, h),
                              f"mlp.experts.{e}.down_proj.weight": (h, fe)})
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
                                          "lm_head.weight": (v, h)}
    for g in hf_groups(arch):
        for name in g.hf_names:
            if g.layer is not None:
                shapes[name] = per_layer[name.split(".", 3)[3]]
    return {n: shapes[n] for g in hf_groups(arch) for n in g.hf_names}


def local_params(model_chunk: torch.nn.Module, arch: ModelArch) -> list[LocalParam]:
    """The parameters of one GPTModel chunk, each tied to its :class:`HFGroup` (raises on any unmapped one)."""
    by_key = {g.key: g for g in hf_groups(arch)}
    names = dict(model_chunk.named_parameters())
    out: list[LocalParam] = []
    if "embedding.word_embeddings.weight" in names:
        out.append(LocalParam("embedding.word_embeddings.weight", by_key["embedding"]))
    decoder = getattr(model_chunk, "decoder", None)
    for i, layer in enumerate(decoder.layers if decoder is not None else []):
        glob = layer.layer_number - 1
        entries = []
        for meg, te_name, _, _ in _layer_entries(arch):
            if "{e}" not in meg:
                entries.append((meg, te_name, meg))
                continue
            # local expert j of this EP rank is global expert local_expert_indices[j]
            for j, e in enumerate(layer.mlp.local_expert_indices):
                entries.append((meg.replace("{e}", str(j)), None, meg.replace("{e}", str(e))))
        for meg, te_name, key in entries:
            for cand in (meg, te_name):
                full = f"decoder.layers.{i}.{cand}"
                if cand is not None and full in names:
                    out.append(LocalParam(full, by_key[f"layers.{glob}.{key}"]))
                    break
            else:
                raise ValueError(f"model chunk has no parameter decoder.layers.{i}.{meg} that {arch.family} needs")
    if "decoder.final_layernorm.weight" in names:
        out.append(LocalParam("decoder.final_layernorm.weight", by_key["final_norm"]))
    if "output_layer.weight" in names:
        if arch.tie_word_embeddings:
            out.append(LocalParam("output_layer.weight", by_key["embedding"], exported=False))
        else:
            out.append(LocalParam("output_layer.weight", by_key["output_layer"]))
    seen = {p.megatron_name for p in out}
    unmapped = sorted(set(names) - seen)
    if unmapped:
        raise ValueError(f"Megatron parameters without an HF mapping: {unmapped}")
    return out


def owned_params(model_chunks, arch: ModelArch) -> dict[str, torch.Tensor]:
    """HF group key -> this rank's shard (detached; FP8 parameters dequantized: ``rlad_megatron.fp8.dequantized``),
    for the exported parameters of every chunk: what export and weight sync read from the learner."""
    owned: dict[str, torch.Tensor] = {}
    for chunk in model_chunks:
        params = dict(chunk.named_parameters())
        for entry in local_params(chunk, arch):
            if entry.exported:
                owned[entry.group.key] = dequantized(params[entry.megatron_name].detach())
    return owned


# ---------------------------------------------------------------------------------------------------------------
# Layout conversions. ``rows`` below are 1-D index ranges; everything works on the leading dim (weights and biases).
# ---------------------------------------------------------------------------------------------------------------


def hf_row_ranges(group: HFGroup, arch: ModelArch, tp_rank: int, tp_size: int,
                  padded_vocab: int) -> list[tuple[int, int]] | None:
    """For each HF tensor of ``group``, the [start, stop) slice along its TP dim that rank ``tp_rank`` needs
    (None: the whole tensor, replicated). For ``row`` kinds the range is over columns (dim 1)."""
    kind = group.kind
    if TP_DIM[kind] is None:
        return None
    if kind == "qkv":
        # TP above the KV heads: the rank's rows lie inside one query group; read that whole group (a few heads)
        ng = max(arch.num_kv_heads // tp_size, 1)
        block = tp_rank // kv_replicas(arch.num_kv_heads, tp_size) if tp_size > arch.num_kv_heads else tp_rank
        q_rows = ng * arch.heads_per_group * arch.head_dim
        kv_rows = ng * arch.head_dim
        return [(block * q_rows, (block + 1) * q_rows)] + [(block * kv_rows, (block + 1) * kv_rows)] * 2
    if kind == "vocab":
        per = padded_vocab // tp_size
        start = tp_rank * per
        return [(min(start, arch.vocab_size), min(start + per, arch.vocab_size))]
    dim = TP_DIM[kind]
    full = hf_shapes(arch)[group.hf_names[0]][dim]
    per = full // tp_size
    rng = (tp_rank * per, (tp_rank + 1) * per)
    return [rng] * len(group.hf_names)


def hf_to_megatron_shard(group: HFGroup, pieces: list[torch.Tensor], arch: ModelArch, tp_size: int,
                         padded_vocab: int, tp_rank: int = 0) -> torch.Tensor:
    """Assemble this rank's Megatron shard from its slices of the HF tensors (as cut by :func:`hf_row_ranges`)."""
    kind = group.kind
    if kind == "qkv":
        ng = max(arch.num_kv_heads // tp_size, 1)
        q, k, v = pieces
        rest = q.shape[1:]
        q = q.reshape(ng, arch.heads_per_group * arch.head_dim, *rest)
        k = k.reshape(ng, arch.head_dim, *rest)
        v = v.reshape(ng, arch.head_dim, *rest)
        fused = torch.cat([q, k, v], dim=1).reshape(-1, *rest)
        reps = kv_replicas(arch.num_kv_heads, tp_size)
        if reps == 1:
            return fused
        per = fused.shape[0] // reps  # this rank's even share of its group's [q; k; v] rows
        part = tp_rank % reps
        return fused[part * per:(part + 1) * per].clone()
    if kind in ("gate_up", "expert_gate_up"):
        return torch.cat(pieces, dim=0)
    if kind == "vocab":
        (rows,) = pieces
        per = padded_vocab // tp_size
        if rows.shape[0] == per:
            return rows
        out = rows.new_zeros((per, *rows.shape[1:]))
        out[: rows.shape[0]] = rows
        return out
    (piece,) = pieces
    return piece


def megatron_full_to_hf(group: HFGroup, shards: list[torch.Tensor], arch: ModelArch) -> list[torch.Tensor]:
    """The HF tensors (unpadded, contiguous) of ``group`` from its TP shards ``shards`` (index = TP rank)."""
    kind = group.kind
    if kind in ("replicated", "expert_down"):
        return [shards[0]]
    if kind == "row":
        return [torch.cat(shards, dim=1)]
    if kind == "vocab":
        return [torch.cat(shards, dim=0)[: arch.vocab_size].contiguous()]
    if kind in ("gate_up", "expert_gate_up"):
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([h[0] for h in halves], 0), torch.cat([h[1] for h in halves], 0)]
    if kind == "qkv":
        full = torch.cat(shards, dim=0)
        rest = full.shape[1:]
        grouped = full.reshape(arch.num_kv_heads, (arch.heads_per_group + 2) * arch.head_dim, *rest)
        q, k, v = grouped.split([arch.heads_per_group * arch.head_dim, arch.head_dim, arch.head_dim], dim=1)
        return [t.reshape(-1, *rest).contiguous() for t in (q, k, v)]
    return [torch.cat(shards, dim=TP_DIM[kind])]
