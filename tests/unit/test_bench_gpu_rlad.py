"""bench/gpu_rlad.py's arithmetic and bookkeeping: the model FLOPs behind its MFU (matrix-product parameters counted
against the Hugging Face model's own linear layers), the GPU peak table, and the report that keeps every finished
part's numbers when a later part fails."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def gpu_rlad():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_rlad as module
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_matmul_parameters_are_the_hf_models_linear_weights(gpu_rlad, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    spec = dict(num_layers=2, hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=32)
    model = AutoModelForCausalLM.from_pretrained(make_tiny_hf_model(tmp_path / "m", "qwen3", vocab_size=300, seed=0,
                                                                    **spec))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gpu_rlad.matmul_params(spec, 300) == linear
    # attention scores: 2 products x 2 FLOPs x heads x head_dim per (query, key) pair, half the square (causal)
    assert gpu_rlad.forward_flops(spec, 300, 1, 8) == 2.0 * linear * 8 + 2 * 2 * 2 * 8 * 8 * 4 * 32 / 2


def test_peak_table(gpu_rlad):
    assert gpu_rlad.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_rlad.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_rlad.peak_bf16_flops("NVIDIA H200") == 989e12
    assert gpu_rlad.peak_bf16_flops("cpu") is None


def test_report_keeps_earlier_parts_when_one_fails(gpu_rlad, tmp_path):
    report = gpu_rlad.Report(tmp_path, device="cpu")
    assert json.loads((tmp_path / "gpu_rlad.json").read_text())["parts"] == {}
    assert report.part("steps", lambda: {"tokens_per_s": 5.0})
    assert not report.part("checkpoint", lambda: 1 / 0)
    assert report.part("export", lambda: {"export_max_abs": 0.0})
    saved = json.loads((tmp_path / "gpu_rlad.json").read_text())
    assert saved["tokens_per_s"] == 5.0 and saved["export_max_abs"] == 0.0
    assert saved["parts"]["steps"] == "ok" and saved["parts"]["checkpoint"].startswith("failed: ZeroDivisionError")
