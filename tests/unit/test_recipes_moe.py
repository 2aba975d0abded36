"""The Qwen3-30B-A3B-shaped MoE teacher -> dense student recipe (issue 19): placement on 8 GPUs, its memory plan
(fits an H200 at EP=1, not an H100; EP=8 reaches the trainer's config and launches), and a Slurm dry run through
NeMo-Run."""
from __future__ import annotations

import io

import pytest

from recipes import get_recipe
from recipes.cli import main
from rlad_megatron.memory_plan import GIB, MemoryPlanError

NAME = "math_qwen3_1p7b_from_30b_a3b"


def test_placement_and_shapes():
    recipe = get_recipe(NAME)
    placement = recipe.validate()
    assert (placement.world_size, placement.tp, placement.dp, placement.teacher) == (8, 1, 8, "megatron")
    teacher = recipe.teacher_shape
    assert (teacher.num_layers, teacher.hidden_size, teacher.num_experts, teacher.moe_top_k,
            teacher.moe_intermediate_size, teacher.num_heads, teacher.num_kv_heads, teacher.vocab_size) == (
        48, 2048, 128, 8, 768, 32, 4, 151936)
    assert recipe.config.model.teacher == "/models/Qwen3-30B-A3B" and recipe.config.loss.algorithm == "rlad"
    assert get_recipe(NAME + "_kdrl").config.loss.algorithm == "kdrl"
    with pytest.raises(ValueError, match="choose 'rlad' or 'kdrl'"):
        get_recipe(NAME, algorithm="grpo")


def test_memory_plan_at_ep1_fits_an_h200_not_an_h100():
    recipe = get_recipe(NAME)
    plan = recipe.memory_plan()
    assert plan.fits and plan.gpu_name == "H200"
    teacher = plan.term("teacher weights")
    assert teacher.bytes / GIB == pytest.approx(30_532_122_624 * 2 / GIB, rel=1e-3)  # all experts on every GPU
    assert "EP=1" in teacher.detail
    with pytest.raises(MemoryPlanError, match="teacher weights 56.9 GiB"):
        recipe.with_gpu("h100").validate()
    four_b = get_recipe(NAME, student="Qwen3-4B")
    assert four_b.memory_plan().fits and four_b.config.parallel.recompute == "full"


def test_expert_parallel_plans_and_launches(capsys):
    recipe = get_recipe(NAME, teacher_ep=8)
    assert recipe.config.parallel.expert_parallel == 8
    plan = recipe.memory_plan()
    experts = 48 * 128 * 3 * 2048 * 768
    assert plan.term("teacher weights").bytes == 2 * (30_532_122_624 - experts + experts // 8)  # experts / EP
    assert not any("not wired" in note for note in plan.notes)
    recipe.validate()  # launchable: placement and memory plan pass
    assert main([NAME, "--plan", "--arg", "teacher_ep=8"]) == 0
    capsys.readouterr()
    assert main([NAME, "--show", "--arg", "teacher_ep=8"]) == 0
    assert "parallel.expert_parallel=8" in capsys.readouterr().out  # the trainer gets it
    with pytest.raises(ValueError, match="choose 1, 2, 4 or 8"):
        get_recipe(NAME, teacher_ep=3)


def test_slurm_dry_run(tmp_path, monkeypatch):
    pytest.importorskip("nemo_run")
    import nemo_run.config

    from recipes.executors import launch, rendered_sbatch, slurm_executor

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    recipe = get_recipe(NAME)
    executor = slurm_executor(recipe, account="acct", partition="batch", time="12:00:00",
                              container_image="nvcr.io/acme/rlad-megatron:0.1.0",
                              container_mounts=["/lustre/models:/models", "/lustre/data:/data"])
    script = rendered_sbatch(launch(recipe, executor, dryrun=True)["experiment_dir"], recipe)
    assert "#SBATCH --nodes=1" in script.splitlines() and "#SBATCH --gpus-per-node=8" in script.splitlines()
    (run,) = [line for line in script.splitlines() if " -m rlad_megatron.cli train " in line]
    assert "python -m rlad_megatron.launch_local --nproc-per-node=8 -m rlad_megatron.cli train " in run
    for arg in ("model.teacher=/models/Qwen3-30B-A3B", "model.student=/models/Qwen3-1.7B",
                "parallel.recompute=full", "trainer.max_tokens_per_micro_batch=65536", "parallel.tensor_parallel=1"):
        assert f" {arg} " in f"{run} ", arg


def test_cli_dry_run_on_an_h100_only_with_ignore_memory_plan(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nemo_run")
    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    args = [NAME, "--executor", "slurm", "--dryrun", "--account", "acct", "--gpu", "h100"]
    assert main(args) == 2
    assert "teacher weights 56.9 GiB" in capsys.readouterr().err
    assert main(args + ["--ignore-memory-plan"]) == 0
    assert "does not fit" in capsys.readouterr().err
    assert list((tmp_path / "nemo_home").glob("experiments/*/*/*_sbatch.sh"))
