"""Export: config.json's dtype names the dtype of the written tensors (issue 20). A Qwen3-style source checkpoint
labelled bfloat16, trained in fp32, must reload in transformers as fp32 with its small updates intact."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model


def _rank_export(src: str, out_root: str) -> None:
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import export_hf_checkpoint

    chunks, arch = load_hf_model(src, trainable=True, params_dtype=torch.float32)
    with torch.no_grad():  # an RL-sized update: invisible in bf16 (relative step 2^-8 near 1)
        for chunk in chunks:
            for name, param in chunk.named_parameters():
                if name.endswith("final_layernorm.weight"):
                    param.add_(1e-5)
    export_hf_checkpoint(chunks, arch, Path(out_root) / "default", tokenizer_dir=src)
    export_hf_checkpoint(chunks, arch, Path(out_root) / "bf16", tokenizer_dir=src, dtype=torch.bfloat16)


def test_fp32_export_reloads_as_fp32_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    src = make_tiny_hf_model(tmp_path / "src", "qwen3", seed=3)
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "bfloat16"  # as the hub's Qwen3 checkpoints are labelled
    (src / "config.json").write_text(json.dumps(cfg))
    run_distributed(_rank_export, 1, args=(str(src), str(tmp_path / "out")))

    fp32 = tmp_path / "out" / "default"
    assert json.loads((fp32 / "config.json").read_text())["dtype"] == "float32"
    tensors = load_file(fp32 / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    model = AutoModelForCausalLM.from_pretrained(fp32)  # default dtype: what the config says
    assert model.dtype == torch.float32
    norm = model.model.norm.weight.detach()
    assert torch.equal(norm, tensors["model.norm.weight"])
    original = load_file(src / "model.safetensors")["model.norm.weight"]
    assert torch.allclose(norm - original, torch.full_like(norm, 1e-5), atol=1e-7)  # the update survived

    bf16 = tmp_path / "out" / "bf16"
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(bf16 / "model.safetensors").values()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(bf16).dtype == torch.bfloat16
