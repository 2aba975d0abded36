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


def test_written_paths_follow_the_file_and_defaults_the_working_directory(tmp_path, monkeypatch) -> None:
    """A path the YAML writes is taken from the YAML's folder; a default the YAML leaves out (the run folder) lands
    where the command runs, as it would without a config file."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "work").mkdir()
    minimal = "loss:\n  algorithm: grpo\ndata:\n  train_files: [d.jsonl]\n"
    (tmp_path / "configs" / "run.yaml").write_text("model:\n  student: models/student\n" + minimal)
    monkeypatch.chdir(tmp_path / "work")
    config = load_run_config(tmp_path / "configs" / "run.yaml")
    assert config.model.student == str(tmp_path / "configs" / "models" / "student")
    assert config.trainer.output_dir == str(tmp_path / "work" / "runs" / "rlad")
    written = load_run_config(tmp_path / "configs" / "run.yaml", ["trainer.output_dir=out"])
    assert written.trainer.output_dir == str(tmp_path / "work" / "out")
    (tmp_path / "configs" / "run.yaml").write_text("model:\n  student: s\n" + minimal + "trainer:\n  output_dir: out\n")
    assert load_run_config(tmp_path / "configs" / "run.yaml").trainer.output_dir == str(tmp_path / "configs" / "out")
