"""The example run configs under configs/ load and validate, and say what the runs they name actually run: the
quickstart config equals the demo's own run config, the logic config equals the paper recipe's (the recipes' paths
are relative to the repository root, where the configs' commands run; the configs' own are relative to configs/)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlad_megatron.config import load_run_config, run_config_to_dict
from rlad_megatron.config.paths import resolve_paths

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_config_loads_and_validates(name: str) -> None:
    config = load_run_config(CONFIGS / name)
    assert config.model.student and config.data.train_files


def test_quickstart_config_is_the_demo_run() -> None:
    from examples.quickstart.prepare import DataFiles
    from examples.quickstart.settings import QuickstartSettings
    from examples.quickstart.train import quickstart_run_config

    root = Path("outputs/quickstart")
    files = DataFiles(train=root / "data" / "train.jsonl", test=root / "data" / "test.jsonl")
    demo = quickstart_run_config(QuickstartSettings(), root / "teacher", root / "student", files,
                                 Path("runs/quickstart_rlad"))
    assert run_config_to_dict(load_run_config(CONFIGS / "quickstart.yaml")) == \
        run_config_to_dict(resolve_paths(demo, REPO))


def test_logic_config_is_the_paper_recipe() -> None:
    from recipes import get_recipe

    recipe = get_recipe("logic_qwen3_0p6b", model_root="models", data_root="data", output_root="runs")
    config = load_run_config(CONFIGS / "logic_qwen3_0p6b.yaml")
    assert run_config_to_dict(config) == run_config_to_dict(resolve_paths(recipe.config, REPO))
    assert (config.loss.algorithm, config.loss.alpha, config.rollout.group_size, config.optim.lr,
            config.data.prompts_per_step) == ("rlad", 0.5, 8, 1e-6, 256)  # the paper's settings
