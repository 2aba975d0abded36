"""The real trainer (vLLM engines, Megatron learner and teacher, weight sync with its probe) with a Mixture-of-Experts
student and a MoE teacher (tiny Qwen3-MoE, 4 experts, top 2) at DP=2, expert parallelism 2 against the same run at
EP=1: token-budget micro-batches with balanced data parallelism give the two ranks micro-batches of different
shapes, which EP=2 makes common over the EP group. The first step is the same (samples, loss, KL to the teacher,
gradient norm, router load-balancing loss), and after the sync each engine serves the learner's weights, every
expert included: at EP=2 a rank holds only half of them, the sync gathers the rest over the EP group.

The EP=2 run also recomputes every student layer in its backward (parallel.recompute=full, Megatron's uniform
method, the setting of the Qwen3-30B-A3B recipe): the same step shows that recomputation, MoE layers and their
router loss included, changes nothing but memory. (It had a launch pair of its own, with a dense student and a MoE
teacher; recomputation applies to the student only, so a MoE student is the stronger check, and the pair cost
~50 s of the suite's budget.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "optim/grad_norm",
        "moe/load_balancing_loss")


def _moe(path: Path, seed: int) -> str:
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    # head_dim 64 like the dense tiny models (vLLM's CPU attention); the project's char tokenizer
    return str(make_tiny_hf_model(path, family="qwen3_moe", seed=seed, num_layers=2, hidden_size=128,
                                  intermediate_size=256, num_heads=2, num_kv_heads=2, head_dim=64,
                                  moe={"router_aux_loss_coef": 0.05}))


def _run(paths: dict, workdir: Path, ep: int, recompute: str) -> list[dict]:
    config = run_config(paths, workdir / "out", parallel={"expert_parallel": ep, "recompute": recompute},
                        data={"prompts_per_step": 4},
                        loss={"algorithm": "kdrl", "kd_beta": 0.5, "kd_beta_final": None},
                        trainer={"steps": 1, "micro_batch_size": 4, "export_hf": False, "skip_uniform_groups": False,
                                 "max_tokens_per_micro_batch": 48})
    done = launch(config, 2, workdir=workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    return read_metrics(workdir / "out")


def test_moe_student_and_teacher_at_ep2_with_full_recompute_match_ep1(tmp_path: Path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")
    paths["student"] = _moe(tmp_path / "models" / "moe_student", seed=5)
    paths["teacher"] = _moe(tmp_path / "models" / "moe_teacher", seed=6)
    ep1 = _run(paths, tmp_path / "ep1", 1, "none")[0]
    ep2 = _run(paths, tmp_path / "ep2", 2, "full")[0]
    for key in KEYS:
        assert ep2[key] == pytest.approx(ep1[key], rel=1e-4, abs=1e-6), (key, ep2[key], ep1[key])
    assert ep1["optim/grad_norm"] > 0 and ep1["loss/kl/teacher_k3"] > 0 and ep1["moe/load_balancing_loss"] > 0.5
    # the engine serves exactly the learner's updated weights, every expert included (the probe after the sync)
    assert ep2["sync/logprob_max_abs"] < 1e-4, ep2["sync/logprob_max_abs"]
