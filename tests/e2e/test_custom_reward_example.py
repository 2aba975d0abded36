"""examples/custom_reward end to end (issue 28): a reward function defined outside the package, named by a file
path relative to the config file, with the data in a schema of its own mapped by data.fields, trains a tiny run
under torchrun started from another folder, the example's folder on no PYTHONPATH. One launch (~40 s), on the
warm-started models the layout runs share."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from examples.custom_reward.prepare import write_data
from rlad_megatron.testing.tiny_run import launch_config_file, read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_reward"


def test_custom_reward_example_trains_under_torchrun(layout_runs, tmp_path) -> None:
    job = tmp_path / "my_job"  # the example as a user would copy it: run.yaml next to its reward file
    job.mkdir()
    for name in ("run.yaml", "digits_reward.py"):
        shutil.copy(EXAMPLE / name, job / name)
    work = job / "work"
    work.mkdir()
    for kind in ("student", "teacher"):  # the warm-started tiny models the layout runs use
        (work / kind).symlink_to(layout_runs.paths[kind])
    write_data(work / "train.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    result = launch_config_file(job / "run.yaml", 1, workdir=tmp_path / "log", cwd=elsewhere,
                                overrides=("trainer.steps=3",), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = read_metrics(work / "run")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["reward/errors"] == 0 for m in metrics)  # imported and run in the reward's worker processes
    # Only the custom reward gives partial credit (0.1-0.5) to a formatted wrong sum: the mean exceeds the accuracy.
    assert any(m["reward/mean"] > m["reward/accuracy"] + 0.01 for m in metrics), metrics
    saved = json.loads((work / "run" / "run_config.json").read_text())
    assert saved["data"]["task"] == f"{job}/digits_reward.py:digit_reward"
    assert saved["data"]["train_files"] == [f"{work}/train.jsonl"]
    assert not (elsewhere / "work").exists()  # nothing resolved against the working directory
