"""Recipes: every one builds and passes its launch checks, carries the paper's settings, and its command line
round-trips through the trainer's override parser. No NeMo-Run here (see test_recipes_slurm.py)."""
from __future__ import annotations

import dataclasses
import os

import pytest

from rlad_megatron.config import ConfigError, load_run_config
from rlad_megatron.config.paths import resolve_paths
from rlad_megatron.placement import ModelShape, PlacementError

from recipes import RECIPES, get_recipe, prepare_quickstart_assets, quickstart, recipe_names
from recipes.base import PINNED_KEYS, config_overrides, format_value

# the paper's runs and baselines; the MoE-teacher recipe (not a paper run) has tests/unit/test_recipes_moe.py
PAPER = [n for n in recipe_names() if n != "quickstart" and "_from_30b_a3b" not in n]


def _quickstart_recipe(tmp_path):
    return quickstart("/tiny/student", "/tiny/teacher", str(tmp_path / "train.jsonl"))


def test_registry_has_each_run_and_its_baselines():
    for base in ("logic_qwen3_0p6b", "logic_qwen3_1p7b", "math_qwen3_1p7b_base", "math_qwen3_8b_base"):
        for suffix in ("", "_grpo", "_kdrl"):
            assert base + suffix in RECIPES
    # + the MoE-teacher recipe, its kdrl baseline and its variant with a teacher pool of its own
    assert "quickstart" in RECIPES and len(RECIPES) == 16
    with pytest.raises(KeyError, match="unknown recipe 'nope'; known recipes: .*logic_qwen3_0p6b"):
        get_recipe("nope")


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_build_and_validate(name):
    recipe = get_recipe(name)
    placement = recipe.validate()
    cfg = recipe.config
    assert placement.world_size == recipe.nodes * recipe.gpus_per_node
    # paper settings (ALGORITHM.md): G=8, lr 1e-6, 256 prompts, alpha 0.5, eps 0.20/0.28, Eq. 1 aggregation
    assert (cfg.rollout.group_size, cfg.optim.lr, cfg.data.prompts_per_step) == (8, 1e-6, 256)
    assert (cfg.loss.alpha, cfg.loss.eps_low, cfg.loss.eps_high) == (0.5, 0.20, 0.28)
    assert cfg.loss.aggregation == "seq-mean-token-mean"
    assert (cfg.trainer.eval_temperature, cfg.trainer.eval_top_p) == (0.6, 0.95)
    algorithm = name.rsplit("_", 1)[-1] if name.endswith(("_grpo", "_kdrl")) else "rlad"
    assert cfg.loss.algorithm == algorithm
    if algorithm == "grpo":
        assert cfg.model.teacher is None and placement.teacher == "none" and recipe.teacher_shape is None
    else:
        assert cfg.model.teacher and placement.teacher == "megatron"
    if algorithm == "kdrl":
        assert (cfg.loss.kd_beta, cfg.loss.kd_beta_final) == (5e-3, 1e-3)
    if name.startswith("logic"):
        assert (recipe.nodes, recipe.gpus_per_node, placement.dp) == (1, 8, 8)
        assert (cfg.trainer.micro_batch_size, cfg.rollout.max_new_tokens) == (32, 8192)
        assert cfg.model.teacher in (None, "/models/Qwen3-8B") and cfg.data.task == "knights_knaves"
    else:
        assert (recipe.nodes, recipe.gpus_per_node) == (8, 8)
        assert (cfg.trainer.micro_batch_size, cfg.rollout.max_new_tokens) == (16, 30720)
        assert cfg.data.task == "math"


def test_paper_layouts():
    assert get_recipe("math_qwen3_1p7b_base").placement().dp == 32
    eight = get_recipe("math_qwen3_8b_base")
    assert (eight.placement().tp, eight.placement().dp, eight.config.teacher.offload) == (4, 16, True)
    assert eight.config.model.teacher == "/models/Qwen3-32B" and eight.config.parallel.sequence_parallel


def test_recipe_function_arguments():
    recipe = get_recipe("logic_qwen3_1p7b_grpo", max_response=2048, model_root="/m", data_root="/d",
                        output_root="/o", steps=7)
    assert recipe.name == "logic_qwen3_1p7b_grpo_2k"
    cfg = recipe.config
    assert (cfg.rollout.max_new_tokens, cfg.model.student, cfg.trainer.steps) == (2048, "/m/Qwen3-1.7B", 7)
    assert cfg.data.train_files == ["/d/kk/train.jsonl"] and cfg.trainer.output_dir == "/o/logic_qwen3_1p7b_grpo_2k"
    with pytest.raises(ValueError, match="algorithm='sft'"):
        get_recipe("logic_qwen3_0p6b", algorithm="sft")


@pytest.mark.parametrize("name", recipe_names())
def test_command_line_round_trips_through_the_trainer_parser(name, tmp_path):
    recipe = _quickstart_recipe(tmp_path) if name == "quickstart" else get_recipe(name)
    args = recipe.train_args()
    assert args[0] == "train"
    assert all(any(a.startswith(key + "=") for a in args) for key in PINNED_KEYS)
    assert load_run_config(None, args[1:]) == resolve_paths(recipe.config, None)  # relative: the job's folder


def test_overrides_and_layout_changes():
    recipe = get_recipe("logic_qwen3_0p6b").with_overrides(["loss.alpha=0.3", "trainer.steps=5",
                                                           "data.train_files=/a.jsonl,/b.jsonl"])
    assert (recipe.config.loss.alpha, recipe.config.trainer.steps) == (0.3, 5)
    assert recipe.config.data.train_files == ["/a.jsonl", "/b.jsonl"]
    assert "loss.alpha=0.3" in recipe.train_args()
    with pytest.raises(ConfigError, match="unknown config key loss.alhpa"):
        recipe.with_overrides(["loss.alhpa=0.3"])
    with pytest.raises(ConfigError, match="alpha"):
        recipe.with_overrides(["loss.alpha=2"])
    small = get_recipe("math_qwen3_8b_base").with_layout(nodes=1)
    assert (small.placement().dp, small.world_size) == (2, 8)
    with pytest.raises(PlacementError, match=r"TP=4 must fit inside one node and divide its 6 GPUs"):
        get_recipe("math_qwen3_8b_base").with_layout(gpus_per_node=6).validate()
    with pytest.raises(PlacementError, match=r"tensor parallel size 3 must divide num_attention_heads=32"):
        get_recipe("math_qwen3_8b_base").with_layout(gpus_per_node=6).with_overrides(
            ["parallel.tensor_parallel=3"]).validate()


def test_fp8_switch_is_checked_at_launch_without_a_gpu():
    recipe = get_recipe("math_qwen3_8b_base").with_overrides(["fp8.enabled=true", "fp8.recipe=blockwise"])
    recipe.validate()  # the launcher has no GPU: the hardware check is the job's, at config time
    assert "fp8.enabled=true" in recipe.train_args() and "fp8.recipe=blockwise" in recipe.train_args()
    with pytest.raises(ConfigError, match="fp8.recipe='fast'"):
        recipe.with_overrides(["fp8.recipe=fast"]).validate()
    with pytest.raises(ConfigError, match="rollout.weight_load=vllm_reload"):
        recipe.with_overrides(["fp8.rollout_fp8=true"]).validate()
    with pytest.raises(ConfigError, match="fp8.enabled: expected true or false"):
        recipe.with_overrides(["fp8.enabled=maybe"])


@pytest.mark.parametrize("value,text", [
    ("/models/Qwen3-8B", "/models/Qwen3-8B"), (None, "null"), (True, "true"), (3, "3"), (1e-6, "1e-06"),
    (0.5, "0.5"), (["/a.jsonl", "/b.jsonl"], "/a.jsonl,/b.jsonl"),
])
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("value,message", [
    (float("nan"), "non-finite"), ({"a": 1}, "cannot pass"), ("a b", "no spaces or quotes"),
    ("it's", "no spaces or quotes"), ([], "empty list"), (["a,b"], "cannot contain ','"),
])
def test_format_value_rejects_what_cannot_travel(value, message):
    with pytest.raises(ConfigError, match=message):
        format_value(value)


def test_values_that_would_read_back_differently_are_refused(tmp_path):
    recipe = _quickstart_recipe(tmp_path)
    odd = dataclasses.replace(recipe.config, trainer=dataclasses.replace(recipe.config.trainer, output_dir="1e3"))
    assert load_run_config(None, config_overrides(odd)).trainer.output_dir == os.path.abspath("1e3")
    # Overrides are converted by the field's type: a str field keeps "true" (it once read back as a boolean).
    odd = dataclasses.replace(recipe.config, trainer=dataclasses.replace(recipe.config.trainer, output_dir="true"))
    assert load_run_config(None, config_overrides(odd)).trainer.output_dir == os.path.abspath("true")


def test_quickstart_assets_and_recipe(tmp_path):
    assets = prepare_quickstart_assets(tmp_path / "assets", num_records=16)
    recipe = quickstart(**assets, output_dir=str(tmp_path / "run"), steps=2)
    placement = recipe.validate()
    assert (recipe.nodes, recipe.gpus_per_node, recipe.gpu) == (1, 2, False)
    assert (placement.tp, placement.dp, placement.num_engines) == (2, 1, 1)
    assert recipe.env["OMP_NUM_THREADS"] == "1"
    assert ModelShape.from_hf_dir(assets["student"], "tiny-student") == recipe.student_shape
    assert ModelShape.from_hf_dir(assets["teacher"], "tiny-teacher") == recipe.teacher_shape
    lines = open(assets["train_file"]).read().splitlines()
    assert len(lines) == 16 and '"prompt"' in lines[0]
    before = (tmp_path / "assets" / "student" / "model.safetensors").stat().st_mtime_ns
    prepare_quickstart_assets(tmp_path / "assets", num_records=16)  # cached: nothing rewritten
    assert (tmp_path / "assets" / "student" / "model.safetensors").stat().st_mtime_ns == before
