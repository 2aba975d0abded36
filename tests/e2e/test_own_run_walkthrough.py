"""The README's walkthrough, "Your own job: from two model folders and a dataset to a Slurm job", run command by
command as a user runs it (issue 28), with tiny models (only the sizes differ): the example's run.yaml and its
reward defined outside the package (examples/custom_reward) copied into a job folder of their own, the data in a
schema of its own; then, from another working directory,

    rlad-megatron data check --config job/run.yaml
    rlad-megatron config --config job/run.yaml
    rlad-megatron plan --config job/run.yaml --cpu
    rlad-megatron launch --config job/run.yaml --cpu --executor slurm --account A --partition P ... trainer.steps=3
    (the log the launcher names)
    rlad-megatron eval --model job/work/run/hf --config job/run.yaml --data job/work/test.jsonl --k 1 --out ...
    rlad-megatron convert mcore-to-hf --ckpt job/work/run --out ...

The job runs on the local Slurm cluster (tools/slurm_local/cluster.sh; RLAD_SLURM_CLUSTER) and trains with the
custom reward: its partial credit shows in reward/mean > reward/accuracy, and no reward call failed. Without a
cluster (not root, Slurm not installed) the same `launch` runs with `--executor local` (NeMo-Run's local executor)
and the test says so; with RLAD_SLURM_CLUSTER set, a cluster that does not answer fails the test. One job."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("nemo_run")
pytest.importorskip("vllm")

from examples.custom_reward.prepare import write_data  # noqa: E402
from rlad_megatron.testing.tiny_run import read_metrics  # noqa: E402
from slurm_cluster import REPO, start_or_explain, stop  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = REPO / "examples" / "custom_reward"
STEPS = 3


@pytest.fixture(scope="module")
def executor():
    """(the local Slurm cluster or None, why there is none)."""
    found, why = start_or_explain()
    if found is None and os.environ.get("RLAD_SLURM_CLUSTER"):
        pytest.fail(f"RLAD_SLURM_CLUSTER is set but {why}")
    yield found, why
    if found is not None:
        stop(found)


def _command() -> list[str]:
    script = Path(sys.executable).parent / "rlad-megatron"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rlad_megatron.cli"]


def _run(args: list[str], *, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    print(f"$ rlad-megatron {' '.join(args)}  -> {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def test_walkthrough_from_model_folders_to_a_trained_job(layout_runs, executor, tmp_path) -> None:
    cluster, why_not = executor
    # the user's job folder: the example's config and reward file, their models and their data
    job = tmp_path / "job"
    job.mkdir()
    for name in ("run.yaml", "digits_reward.py"):
        shutil.copy(EXAMPLE / name, job / name)
    work = job / "work"
    work.mkdir()
    for role in ("student", "teacher"):  # warm-started tiny models (the layout runs'), as two HF folders
        (work / role).symlink_to(layout_runs.paths[role])
    write_data(work / "train.jsonl")
    (work / "test.jsonl").write_text("".join((work / "train.jsonl").read_text().splitlines(True)[:8]))
    elsewhere = tmp_path / "elsewhere"  # commands run from another folder: paths come from the config's folder
    elsewhere.mkdir()
    env = dict(os.environ, NEMORUN_HOME=str(tmp_path / "nemo"), PYTHONUNBUFFERED="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    if cluster is not None:
        env.update(cluster.env)
    config = str(job / "run.yaml")

    checked = _run(["data", "check", "--config", config], cwd=elsewhere, env=env)
    assert checked.returncode == 0 and f"{job}/digits_reward.py:digit_reward" in checked.stdout
    resolved = _run(["config", "--config", config], cwd=elsewhere, env=env)
    assert resolved.returncode == 0 and f"task: {job}/digits_reward.py:digit_reward" in resolved.stdout
    planned = _run(["plan", "--config", config, "--cpu"], cwd=elsewhere, env=env)
    assert planned.returncode == 0, planned.stderr
    assert f"(shape from {work}/student/config.json)" in planned.stdout and "memory plan per GPU" in planned.stdout

    where = (["--executor", "slurm", "--account", cluster.account, "--partition", cluster.partition,
              "--time", "00:15:00"] if cluster is not None else ["--executor", "local"])
    if cluster is None:  # in pytest's warnings summary: the Slurm half of the walkthrough did not run here
        warnings.warn(f"walkthrough launched with --executor local, not on Slurm: {why_not}")
    launched = _run(["launch", "--config", config, "--cpu", *where, f"trainer.steps={STEPS}",
                     f"trainer.save_every={STEPS}"], cwd=elsewhere, env=env, timeout=900)
    assert launched.returncode == 0, launched.stdout[-4000:] + launched.stderr[-4000:]
    assert "status: {'run': SUCCEEDED" in launched.stdout
    logs = [line.split("log: ", 1)[1] for line in launched.stdout.splitlines() if line.startswith("log: ")]
    assert logs and any("[rlad] world=1 tp=1" in Path(p).read_text(errors="replace") for p in logs), logs
    if cluster is not None:
        script = next((tmp_path / "nemo").rglob("run_sbatch.sh")).read_text()
        assert f"data.task={job}/digits_reward.py:digit_reward" in script and "--gpus-per-node" not in script

    metrics = read_metrics(work / "run")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(m["reward/errors"] == 0 for m in metrics)  # the reward file imported and ran in its workers
    # only the custom reward gives partial credit (0.1-0.5) to a formatted wrong sum: the mean exceeds the accuracy
    assert any(m["reward/mean"] > m["reward/accuracy"] + 0.01 for m in metrics), metrics
    saved = json.loads((work / "run" / "run_config.json").read_text())
    assert saved["data"]["task"] == f"{job}/digits_reward.py:digit_reward"
    assert not (elsewhere / "work").exists()

    evaluated = _run(["eval", "--model", str(work / "run" / "hf"), "--config", config, "--data",
                      str(work / "test.jsonl"), "--k", "1", "--out", str(tmp_path / "eval")], cwd=elsewhere, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["benchmarks"] and "reward errors: 0" in evaluated.stdout
    converted = _run(["convert", "mcore-to-hf", "--ckpt", str(work / "run"), "--out", str(tmp_path / "student_hf")],
                     cwd=elsewhere, env=env)
    assert converted.returncode == 0, converted.stderr[-3000:]
    from safetensors.torch import load_file

    ours, exported = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "student_hf", work / "run" / "hf"))
    assert ours.keys() == exported.keys() and all((ours[k] == exported[k]).all() for k in ours)
