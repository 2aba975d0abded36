"""W3 of bench/step.py (issue 31): its trainer config is a valid run config with W3's shape, and the HF reference's
lean log-probs equal the plain log-softmax ones."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_w3_config_is_a_valid_run_config(tmp_path):
    from rlad_megatron.config import run_config_from_dict

    step = _load("step")
    paths = {"student": str(tmp_path / "s"), "teacher": str(tmp_path / "t"), "train": str(tmp_path / "train.jsonl")}
    config = run_config_from_dict(step.w3_config(paths, "rlad", 1, 3, tmp_path / "run"))
    assert config.rollout.max_new_tokens == 128 and config.rollout.group_size == 8
    assert config.data.prompts_per_step == 8 and config.trainer.fused_logprobs == "auto"
    assert config.trainer.max_tokens_per_micro_batch >= 32 + 128  # at least one whole sequence
    assert step.W3_VOCAB == 151936


def test_hf_reference_lean_logprobs_equal_log_softmax():
    hf = _load("hf_reference")

    class Model(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            logits = torch.sin(input_ids[..., None].float() * torch.arange(1, 41).float())
            return type("Out", (), {"logits": logits * 3})

    seq = torch.randint(0, 40, (3, 7))
    att = torch.ones_like(seq)
    torch.testing.assert_close(hf.token_logprobs(Model(), seq, att, lean=True), hf.token_logprobs(Model(), seq, att))
