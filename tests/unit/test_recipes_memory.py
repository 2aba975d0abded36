"""Recipes and the memory plan: every paper recipe fits its GPU, `python -m recipes NAME --plan` prints the plan by
component, and a recipe that does not fit refuses to launch, naming the largest terms and settings that fit."""
from __future__ import annotations

import re

import pytest

from recipes import RECIPES, get_recipe
from recipes.cli import main
from rlad_megatron.memory_plan import MemoryPlanError

GPU_RECIPES = sorted(name for name in RECIPES if name != "quickstart")


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_every_gpu_recipe_fits_its_gpu(name):
    recipe = get_recipe(name)
    plan = recipe.memory_plan()
    assert plan is not None and plan.fits, plan.describe()
    assert recipe.validate().dp >= 1  # validate() checks the plan too
    assert recipe.config.trainer.max_tokens_per_micro_batch >= (recipe.config.data.max_prompt_tokens
                                                                + recipe.config.rollout.max_new_tokens)


def test_plan_is_printed_by_component(capsys):
    assert main(["math_qwen3_8b_base", "--plan"]) == 0
    out = capsys.readouterr().out
    for line in ("memory plan per GPU (H200, 139.8 GiB)", "student weights", "student optimizer (Adam)",
                 "teacher weights", "engine KV cache", "student activations", "student logits + gradient",
                 "scoring logits", "fits"):
        assert line in out, line
    assert "recompute=none" in out and "trainer.max_tokens_per_micro_batch=65536" in out


def test_a_recipe_that_does_not_fit_refuses_to_launch(capsys):
    # the 8B math run planned for H200s does not fit an H100 as configured
    code = main(["math_qwen3_8b_base", "--gpu", "h100", "--show"])
    err = capsys.readouterr().err
    assert code == 2
    assert "79.6 GiB" in err and "student activations" in err and "engine KV cache" in err
    suggested = re.search(r"Settings that would fit: (parallel.recompute=full with )?"
                          r"trainer.max_tokens_per_micro_batch=(\d+)", err)
    assert suggested, err
    assert main(["math_qwen3_8b_base", "--gpu", "h100", "--plan"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    # the suggested settings fit
    recompute = ["parallel.recompute=full"] if suggested.group(1) else []
    assert main(["math_qwen3_8b_base", "--gpu", "h100", "--show", *recompute,
                 f"trainer.max_tokens_per_micro_batch={suggested.group(2)}"]) == 0
    capsys.readouterr()
    assert main(["math_qwen3_8b_base", "--gpu", "h100", "--show", "--ignore-memory-plan"]) == 0
    assert "does not fit" in capsys.readouterr().err


def test_the_paper_micro_batches_without_a_token_budget_do_not_fit():
    recipe = get_recipe("math_qwen3_8b_base").with_overrides(["trainer.max_tokens_per_micro_batch=null"])
    with pytest.raises(MemoryPlanError, match=r"student activations [0-9.]+ GiB.*Settings that would fit: "
                                              r"trainer.max_tokens_per_micro_batch="):
        recipe.validate()
    assert recipe.validate(check_memory=False).dp == 16


def test_quickstart_is_planned_without_a_gpu_limit(tmp_path):
    from recipes import prepare_quickstart_assets, quickstart

    recipe = quickstart(**prepare_quickstart_assets(tmp_path / "assets"))
    plan = recipe.memory_plan()
    assert plan.gpu_gib is None and plan.fits and plan.peak_bytes > 0
    assert "CUDA context" not in plan.describe()
