"""Hugging Face ``config.json`` (Llama, Qwen2, Qwen3 and their MoE families) -> :class:`ModelArch` -> Megatron ``TransformerConfig``.

``ModelArch`` is the one description of a dense decoder that the builder, the name table, the loader, the exporter
and the checkpoint converter share. It keeps the original ``config.json`` dict, so that an export writes back what
was read. Anything this project cannot reproduce exactly (another architecture, a bias on the output projection,
sliding-window attention, a RoPE scaling type other than ``llama3``/``default``, an activation other than SiLU)
raises ``ValueError`` naming the option, instead of building a model that silently differs from the checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlad_megatron.models.layout import check_pipeline_layout, check_tensor_parallel

#: model_type -> the ``architectures`` entry transformers writes for it.
SUPPORTED_FAMILIES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
MOE_FAMILIES: tuple[str, ...] = ("qwen2_moe", "qwen3_moe")
SUPPORTED_ROPE_TYPES: tuple[str, ...] = ("default", "llama3")
DEFAULT_VOCAB_DIVISOR = 128


@dataclass(frozen=True)
class ModelArch:
    """A dense GQA decoder with RMSNorm, SwiGLU and RoPE, as read from a HF config.

    Fields use HF meanings: ``vocab_size`` is the checkpoint's embedding rows (never the Megatron padded size).
    """

    family: str  # "llama" | "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q/k/v projections only (Qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (Qwen3)
    rope_scaling: dict[str, Any] | None = None  # llama3 parameters, or None
    # Mixture of Experts (every layer sparse; 0 experts: a dense model)
    num_experts: int = 0
    moe_top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the top-k routing probabilities (Qwen3-MoE: True)
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE's shared expert (with a sigmoid gate), 0: none
    router_aux_loss_coef: float = 0.0
    hf_config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelArch":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelArch JSON has unknown keys {unknown}: written by a newer version?")
        return cls(**data)


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, llama3 scaling or None) from either the transformers>=5 ``rope_parameters`` form or the older
    ``rope_theta`` + ``rope_scaling`` form."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling")
    if scaling:
        params = {**scaling, **params}
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported RoPE scaling type {rope_type!r} in config.json (rope_scaling/rope_parameters): "
            f"supported are {SUPPORTED_ROPE_TYPES}"
        )
    if rope_type == "default":
        return theta, None
    required = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"llama3 RoPE scaling in config.json lacks {missing}")
    scaling = {"rope_type": "llama3", **{k: float(params[k]) for k in required}}
    scaling["original_max_position_embeddings"] = int(params["original_max_position_embeddings"])
    return theta, scaling


def arch_from_hf_config(cfg: dict[str, Any]) -> ModelArch:
    """Parse a HF config dict; raise ``ValueError`` naming any architecture or option we cannot reproduce."""
    family = cfg.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"unsupported model_type {family!r} (architectures={cfg.get('architectures')}): supported families are "
            f"{sorted(SUPPORTED_FAMILIES)}"
        )
    archs = cfg.get("architectures") or [SUPPORTED_FAMILIES[family]]
    if archs != [SUPPORTED_FAMILIES[family]]:
        raise ValueError(f"unsupported architectures {archs}: expected [{SUPPORTED_FAMILIES[family]!r}]")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"unsupported hidden_act {act!r}: only 'silu' (SwiGLU) is supported")
    if family in ("llama", "qwen3", "qwen3_moe") and cfg.get("attention_bias", False):
        raise ValueError(f"unsupported attention_bias=True for {family}: it adds a bias to o_proj too")
    if cfg.get("mlp_bias", False):
        raise ValueError("unsupported mlp_bias=True")
    if cfg.get("use_sliding_window", False):
        raise ValueError("unsupported use_sliding_window=True: only full attention is supported")
    layer_types = cfg.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"unsupported layer_types {sorted(set(layer_types))}: only 'full_attention'")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise ValueError(f"unsupported pretraining_tp={cfg['pretraining_tp']}: re-save the model with 1")
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    hidden = int(cfg["hidden_size"])
    head_dim = cfg.get("head_dim") or hidden // heads
    theta, scaling = _rope(cfg)
    moe = _moe_fields(cfg) if family in MOE_FAMILIES else {}
    return ModelArch(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(head_dim),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        qkv_bias=family in ("qwen2", "qwen2_moe"),
        qk_norm=family in ("qwen3", "qwen3_moe"),
        rope_scaling=scaling,
        hf_config=dict(cfg),
        **moe,
    )


def _moe_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """The MoE fields of a Qwen2-MoE / Qwen3-MoE config; refuses layouts with dense layers in between."""
    experts = int(cfg.get("num_experts") or cfg.get("num_local_experts") or 0)
    if experts < 1:
        raise ValueError(f"{cfg.get('model_type')} config.json has no num_experts")
    if int(cfg.get("decoder_sparse_step", 1)) != 1 or cfg.get("mlp_only_layers"):
        raise ValueError(f"unsupported decoder_sparse_step={cfg.get('decoder_sparse_step')} / mlp_only_layers="
                         f"{cfg.get('mlp_only_layers')}: only models whose every layer is MoE are supported")
    if cfg.get("model_type") == "qwen2_moe" and not cfg.get("qkv_bias", True):
        raise ValueError("unsupported qkv_bias=False for qwen2_moe")
    top_k = int(cfg["num_experts_per_tok"])
    if not 1 <= top_k <= experts:
        raise ValueError(f"num_experts_per_tok={top_k} must be in [1, num_experts={experts}]")
    return dict(
        num_experts=experts, moe_top_k=top_k, moe_intermediate_size=int(cfg["moe_intermediate_size"]),
        norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
        shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0)
        if cfg.get("model_type") == "qwen2_moe" else 0,
        router_aux_loss_coef=float(cfg.get("router_aux_loss_coef", 0.0)),
    )


def load_arch(hf_dir: str | Path) -> ModelArch:
    """Read ``<hf_dir>/config.json`` into a :class:`ModelArch`."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {hf_dir}: expected a Hugging Face model directory")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    return arch_from_hf_config(cfg)


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = DEFAULT_VOCAB_DIVISOR) -> int:
    """Smallest multiple of ``divisible_by * tp`` that is >= ``vocab_size`` (the Megatron embedding rows)."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def transformer_config_for(
    arch: ModelArch,
    *,
    tp: int,
    pp: int,
    params_dtype: torch.dtype = torch.float32,
    sequence_parallel: bool = False,
    **overrides: Any,
):
    """The Megatron ``TransformerConfig`` reproducing ``arch`` at tensor parallel ``tp`` and pipeline ``pp``.

    ``tp`` may exceed the KV heads (megatron replicates them in activations, see
    :mod:`rlad_megatron.models.layout`); uneven pipeline stages come as the overrides
    ``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``.

    ``overrides`` are further ``TransformerConfig`` fields (e.g. ``recompute_granularity``); they win.
    Weights are not randomly initialised by default (``perform_initialization=False``): the loader fills them.
    """
    from megatron.core.transformer import TransformerConfig  # lazy: megatron-core is heavy (seconds)

    check_tensor_parallel(arch, tp)
    stages = check_pipeline_layout(arch.num_layers, pp, overrides.get("num_layers_in_first_pipeline_stage"),
                                   overrides.get("num_layers_in_last_pipeline_stage"))
    if overrides.get("recompute_method") == "uniform":
        chunk = overrides.get("recompute_num_layers") or 1
        if any(n % chunk for n in stages):
            raise ValueError(f"recompute_num_layers={chunk} must divide the layers of every pipeline stage "
                             f"{stages} (megatron's uniform method checkpoints whole chunks): choose among "
                             f"{[d for d in range(1, min(stages) + 1) if all(n % d == 0 for n in stages)]}")
    if params_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"params_dtype {params_dtype} not supported: use float32, bfloat16 or float16")
    fields: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.intermediate_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=sequence_parallel and tp > 1,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        perform_initialization=False,
    )
    if arch.is_moe:
        fields.update(moe_config_fields(arch))
    fields.update(overrides)
    return TransformerConfig(**fields)


def moe_config_fields(arch: ModelArch) -> dict[str, Any]:
    """``TransformerConfig`` fields of a Qwen MoE: softmax router over all experts, top-k; HF's renormalised
    top-k probabilities (``norm_topk_prob``) are megatron's softmax over the top-k logits (``pre_softmax=False``),
    plain top-k probabilities are ``pre_softmax=True``. Experts are not tensor-parallel (expert TP = 1): expert
    parallelism shards them; tokens move with the allgather dispatcher (gloo has no all-to-all)."""
    fields: dict[str, Any] = dict(
        num_moe_experts=arch.num_experts,
        moe_router_topk=arch.moe_top_k,
        moe_ffn_hidden_size=arch.moe_intermediate_size,
        moe_router_pre_softmax=not arch.norm_topk_prob,
        moe_router_score_function="softmax",
        moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=arch.router_aux_loss_coef,
        moe_router_dtype="fp32",
        moe_token_dispatcher_type="allgather",
        moe_grouped_gemm=False,
        expert_tensor_parallel_size=1,
    )
    if arch.shared_expert_intermediate_size:
        fields.update(moe_shared_expert_intermediate_size=arch.shared_expert_intermediate_size,
                      moe_shared_expert_gate=True)
    return fields
