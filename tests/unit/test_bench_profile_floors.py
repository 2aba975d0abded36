"""The compute floors of docs/performance.md: bench/profile_step.py's parameter and FLOP arithmetic against the real
W1 models (an independent count: the parameters of the HF checkpoint the trainer loads)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def profile_step():
    sys.path.insert(0, str(BENCH))
    try:
        import profile_step as module
        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("which", ["STUDENT", "TEACHER"])
def test_matmul_parameters_match_the_w1_checkpoint(profile_step, tmp_path, which):
    import torch
    from transformers import AutoModelForCausalLM

    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    spec = getattr(profile_step, which)
    folder = make_tiny_hf_model(tmp_path / which.lower(), seed=1, **spec)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    vocab = model.config.vocab_size
    # every 2-D weight but the input embedding is a matmul of the forward (norms are 1-D)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n)
    assert profile_step.transformer_params(spec, vocab) == matmul


def test_forward_flops_count_gemms_and_causal_scores(profile_step):
    spec = dict(num_layers=2, hidden_size=8, intermediate_size=16, num_heads=2, num_kv_heads=2)
    params = profile_step.transformer_params(spec, vocab=10)
    assert params == 2 * (8 * 8 * 2 + 2 * 8 * 8 + 3 * 8 * 16) + 8 * 10
    rows, width = 3, 5
    # QK^T and PV: 2 matmuls x 2 FLOPs x rows x width^2 x hidden per layer, half of it under the causal mask
    scores = 2 * 2 * 2 * rows * width * width * 8 / 2
    assert profile_step.forward_flops(spec, 10, rows, width) == 2.0 * params * rows * width + scores
