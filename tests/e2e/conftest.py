"""Runs that several end-to-end test files check, each made once per session (on first use) to keep the suite's
time budget:

- the quickstart recipe's assets and its uninterrupted 3-step run through NeMo-Run's LocalExecutor, which
  test_recipe_quickstart checks and which is the reference of the torchrun-restarted and the Slurm-requeued runs
  (the same recipe and seeds give the same per-step metrics);
- the trainer at TP=1/TP=2/PP=2/DP=2/CP=2 and with asynchronous rollouts (layout_runs.py): test_trainer_layouts
  checks them all, test_console_quiet the TP=2 run's console and log."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from layout_runs import LayoutRuns
from quickstart_runs import QUICKSTART_STEPS, nemo_run_local_env


@pytest.fixture(scope="session")
def quickstart_assets(tmp_path_factory) -> dict[str, str]:
    """The quickstart recipe's tiny Qwen3 student and teacher and its arithmetic data (seeded: the same files in
    every session)."""
    pytest.importorskip("nemo_run")
    from recipes import prepare_quickstart_assets

    return prepare_quickstart_assets(tmp_path_factory.mktemp("quickstart_assets"), num_records=32)


@pytest.fixture(scope="session")
def quickstart_recipe() -> Callable:
    """``make(assets, out)``: the quickstart recipe for QUICKSTART_STEPS steps, a checkpoint after every step."""

    def make(assets: dict, out: Path):
        from recipes import quickstart

        return quickstart(**assets, output_dir=str(out), steps=QUICKSTART_STEPS).with_overrides(
            ["trainer.save_every=1"])

    return make


@pytest.fixture(scope="session")
def quickstart_uninterrupted(quickstart_assets, quickstart_recipe, tmp_path_factory) -> tuple[dict, Path]:
    """(launch result, output dir) of the quickstart recipe run once, uninterrupted, through the LocalExecutor."""
    pytest.importorskip("vllm")
    from recipes.executors import launch, local_executor

    out = tmp_path_factory.mktemp("quickstart_straight") / "run"
    recipe = quickstart_recipe(quickstart_assets, out)
    with nemo_run_local_env(tmp_path_factory.mktemp("nemo_home_straight")):
        result = launch(recipe, local_executor(recipe), experiment_name="quickstart-e2e")
    return result, out


@pytest.fixture(scope="session")
def layout_runs(tmp_path_factory) -> LayoutRuns:
    """The trainer's layouts on warm-started models, each launched on first access (see layout_runs.py)."""
    return LayoutRuns(tmp_path_factory.mktemp("layouts"))
