"""make_tiny_hf_model: builds each family locally, deterministic by seed, reloadable by transformers."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlad_megatron.tiny.hf_model import make_tiny_hf_model


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_builds_and_reloads(tmp_path, family):
    from transformers import AutoModelForCausalLM

    path = make_tiny_hf_model(tmp_path / family, family, seed=3)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == family
    assert cfg["head_dim"] == 16 and cfg["num_key_value_heads"] == 2 and cfg["vocab_size"] == 100
    assert (path / "tokenizer.json").exists()
    tensors = load_file(path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any(k.endswith("q_proj.bias") for k in tensors) == (family == "qwen2")
    assert any(k.endswith("q_norm.weight") for k in tensors) == (family == "qwen3")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert torch.equal(model.model.embed_tokens.weight, tensors["model.embed_tokens.weight"])


def test_deterministic_by_seed_and_tied(tmp_path):
    a = load_file(make_tiny_hf_model(tmp_path / "a", "llama", seed=1, tie_word_embeddings=True) / "model.safetensors")
    b = load_file(make_tiny_hf_model(tmp_path / "b", "llama", seed=1, tie_word_embeddings=True) / "model.safetensors")
    c = load_file(make_tiny_hf_model(tmp_path / "c", "llama", seed=2, tie_word_embeddings=True) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert "lm_head.weight" not in a
