"""HF config.json parsing: families, GQA, head_dim, RoPE forms, and clear errors for what we cannot reproduce."""
from __future__ import annotations

import json

import pytest
import torch

from rlad_megatron.models.builder import rope_inv_freq
from rlad_megatron.models.hf_config import (
    ModelArch, arch_from_hf_config, load_arch, padded_vocab_size, transformer_config_for,
)
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

BASE = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "hidden_act": "silu"}


def test_families_from_saved_configs(tmp_path):
    for fam in ("llama", "qwen2", "qwen3"):
        arch = load_arch(make_tiny_hf_model(tmp_path / fam, fam, tie_word_embeddings=fam == "qwen3"))
        assert (arch.family, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (fam, 4, 2, 16)
        assert arch.qkv_bias == (fam == "qwen2") and arch.qk_norm == (fam == "qwen3")
        assert arch.tie_word_embeddings == (fam == "qwen3") and arch.vocab_size == 100
        assert ModelArch.from_json(arch.to_json()) == arch


def test_old_style_rope_and_head_dim():
    cfg = dict(BASE, rope_theta=5e5, head_dim=32, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    arch = arch_from_hf_config(cfg)
    assert arch.rope_theta == 5e5 and arch.head_dim == 32 and arch.rope_scaling["factor"] == 8.0
    plain = arch_from_hf_config(dict(BASE, rope_theta=5e5, head_dim=32))
    assert plain.rope_scaling is None
    # llama3 scaling slows the low frequencies by `factor` and keeps the high ones
    scaled, unscaled = rope_inv_freq(arch), rope_inv_freq(plain)
    assert scaled[0] == unscaled[0] and torch.allclose(scaled[-1], unscaled[-1] / 8)


@pytest.mark.parametrize("change, words", [
    ({"model_type": "mistral"}, "mistral"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"hidden_act": "gelu"}, "gelu"),
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}, "dynamic"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_options_are_named(change, words):
    with pytest.raises(ValueError, match=words):
        arch_from_hf_config(dict(BASE, **change))


def test_transformer_config_and_vocab_padding():
    arch = arch_from_hf_config(dict(BASE, model_type="qwen3", architectures=["Qwen3ForCausalLM"]))
    cfg = transformer_config_for(arch, tp=2, pp=1)
    assert (cfg.num_query_groups, cfg.kv_channels, cfg.qk_layernorm, cfg.add_qkv_bias) == (2, 16, True, False)
    assert cfg.layernorm_epsilon == 1e-5 and cfg.gated_linear_unit and cfg.normalization == "RMSNorm"
    assert padded_vocab_size(1000, 1) == 1024 and padded_vocab_size(1000, 2) == 1024
    assert padded_vocab_size(1025, 2) == 1280 and padded_vocab_size(100, 4) == 512
    assert transformer_config_for(arch, tp=4, pp=1).num_query_groups == 2  # TP=4 replicates the 2 KV heads
    with pytest.raises(ValueError, match=r"num_attention_heads=4: choose tp among \[1, 2, 4\]"):
        transformer_config_for(arch, tp=3, pp=1)
    with pytest.raises(ValueError, match="num_hidden_layers=2"):
        transformer_config_for(arch, tp=1, pp=3)


def test_load_arch_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_arch(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_arch(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(BASE, model_type="gpt2")))
    with pytest.raises(ValueError, match="gpt2"):
        load_arch(tmp_path)
