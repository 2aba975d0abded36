"""The real trainer (vLLM engine, Megatron learner, Megatron teacher, weight sync) at DP=2 with token-budget
micro-batches, sequence packing and balanced data parallelism gives the fixed padded path's first step: the same
samples (layout-independent seeds), the same loss, KL to the teacher and gradient norm; two updates per rollout batch
so the old-policy log-probs go through the forward budget too. KDRL with a large KL weight: random tiny models earn
no reward, and the KL term to the teacher still gives every token a gradient."""
from __future__ import annotations

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "optim/grad_norm")


def _run(paths, workdir, trainer: dict) -> list[dict]:
    config = run_config(paths, workdir / "out", rollout={"group_size": 4, "max_new_tokens": 24},
                        data={"prompts_per_step": 4}, loss={"algorithm": "kdrl", "kd_beta": 0.5, "kd_beta_final": None},
                        trainer={"steps": 1, "micro_batch_size": 4, "updates_per_batch": 2, "export_hf": False,
                                 "skip_uniform_groups": False, **trainer})
    done = launch(config, 2, workdir=workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    return read_metrics(workdir / "out")


def test_budget_and_packing_match_fixed_path_at_dp2(tmp_path) -> None:
    paths = prepare_models_and_data(tmp_path / "models")
    fixed = _run(paths, tmp_path / "fixed", {})
    packed = _run(paths, tmp_path / "packed", {"max_tokens_per_micro_batch": 48, "sequence_packing": True})
    assert fixed[0]["optim/applied_updates"] == packed[0]["optim/applied_updates"] == 2
    for key in KEYS:
        assert packed[0][key] == pytest.approx(fixed[0][key], rel=1e-4, abs=1e-6), (key, packed[0][key], fixed[0][key])
    assert fixed[0]["optim/grad_norm"] > 0
    assert packed[0]["sync/logprob_max_abs"] < 1e-4  # the engine serves the weights the packed path trained
