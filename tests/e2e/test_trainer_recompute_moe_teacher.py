"""The trainer with parallel.recompute=full and a Mixture-of-Experts teacher (a tiny Qwen3-MoE built locally, the
shape family of the Qwen3-30B-A3B recipe, at EP=1 as the trainer runs it): the first step equals the step without
recomputation (same loss, gradient norm and teacher KL), so recomputation reaches the learner and changes nothing
but memory."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_full_recompute_step_equals_plain_step_with_a_moe_teacher(tmp_path: Path) -> None:
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    paths = prepare_models_and_data(tmp_path / "models")
    # head_dim 64 like the dense tiny models (vLLM's CPU attention); same char tokenizer as the student
    paths["teacher"] = str(make_tiny_hf_model(tmp_path / "models" / "moe_teacher", family="qwen3_moe", seed=3,
                                              num_layers=2, hidden_size=128, intermediate_size=256, num_heads=2,
                                              num_kv_heads=2, head_dim=64))
    metrics = {}
    for recompute in ("none", "full"):
        config = run_config(paths, tmp_path / recompute / "out", parallel={"recompute": recompute},
                            trainer={"steps": 1, "skip_uniform_groups": False, "export_hf": False})
        done = launch(config, 1, workdir=tmp_path / recompute, timeout=500)
        assert done.returncode == 0, done.stdout[-5000:]
        metrics[recompute] = read_metrics(tmp_path / recompute / "out")[0]
    plain, full = metrics["none"], metrics["full"]
    assert plain["loss/kl/teacher_k3"] > 0  # the MoE teacher scored the samples
    for key in ("reward/mean", "loss/kl/teacher_k3", "loss/loss", "optim/grad_norm"):
        assert full[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-9), key
