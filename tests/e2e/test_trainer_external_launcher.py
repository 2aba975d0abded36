"""The real trainer with engines sharded like the learner (rollout.executor=external_launcher, issue 21) on CPU:
at TP=2 every rank holds one shard of its group's engine (engine TP 2), at PP=2 every rank holds a whole engine
(engine TP 1, one per pipeline stage). The first step's samples and losses equal those of the one-engine-per-group
("uni") TP=2 run, every sync serves the learner's weights on every shard, the periodic evaluation runs through the
sharded engine of rank 0's group."""
from __future__ import annotations

import pytest

from rlad_megatron.testing.tiny_run import launch, prepare_models_and_data, read_metrics, run_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = 3
RUNS = {  # name: (processes, parallel section, rollout.executor)
    "uni_tp2": (2, {"tensor_parallel": 2}, "uni"),
    "el_tp2": (2, {"tensor_parallel": 2}, "external_launcher"),
    "el_pp2": (2, {"pipeline_parallel": 2}, "external_launcher"),
}
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "loss/kl/teacher_k3", "optim/grad_norm")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    paths = prepare_models_and_data(tmp_path_factory.mktemp("models"))
    results = {}
    for name, (nproc, parallel, executor) in RUNS.items():
        workdir = tmp_path_factory.mktemp(name)
        config = run_config(
            paths, workdir / "out", parallel=parallel,
            rollout={"group_size": 4, "max_new_tokens": 16, "executor": executor},
            data={"prompts_per_step": 8, "eval_files": [paths["train"]]},
            trainer={"steps": STEPS, "micro_batch_size": 8, "export_hf": False, "eval_every": 2, "eval_samples": 1,
                     "skip_uniform_groups": False},  # random models: groups of equal rewards still train
            loss={"algorithm": "rlad", "alpha": 0.5},
        )
        done = launch(config, nproc, workdir=workdir, timeout=600)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-6000:]}"
        results[name] = read_metrics(workdir / "out")
    return results


@pytest.mark.parametrize("name", ["el_tp2", "el_pp2"])
def test_sharded_engines_match_one_engine_per_group(name, runs) -> None:
    reference, got = runs["uni_tp2"][0], runs[name][0]
    for key in KEYS:
        assert got[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), f"{name} step 1 {key}"


def test_every_sync_serves_the_learner_weights(runs) -> None:
    for name, metrics in runs.items():
        assert len(metrics) == STEPS
        for m in metrics:
            assert m["sync/logprob_max_abs"] < 1e-4, f"{name} step {m['step']}"


def test_evaluation_through_the_sharded_engine(runs) -> None:
    for name in ("el_tp2", "el_pp2"):
        evaluated = [m for m in runs[name] if "eval/accuracy" in m]
        assert [m["step"] for m in evaluated] == [2, STEPS]  # every eval_every steps and at the end
        assert all(0 <= m["eval/accuracy"] <= 1 for m in evaluated)
