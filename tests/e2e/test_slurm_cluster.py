"""Recipes submitted through NeMo-Run's real SlurmExecutor to a real local Slurm cluster (two slurmd "nodes" on this
machine, accounting through slurmdbd; see tools/slurm_local/cluster.sh), waiting for the job like a user does:

- the quickstart recipe on two nodes (DP=2 across nodes): SUCCEEDED, finite metrics for every step, the student
  exported as a Hugging Face checkpoint;
- the quickstart recipe on two nodes with the teacher in a pool of its own: the second node's rank serves the
  Megatron teacher, the first trains (the same checks, and the teacher's log-probs came from the other node);
- a job whose config is bad (a student folder that does not exist) is reported FAILED, and the log the launcher
  points to holds the rank's error;
- the quickstart recipe on one node (TP=2; the ranks started by the loopback launcher, rlad_megatron.launch_local,
  under srun), submitted with ``--requeue`` (trainer.resume=auto) and requeued by
  ``scontrol requeue`` after its first checkpoint: SUCCEEDED, finite metrics, the HF export, and the same per-step
  metrics as the uninterrupted run of the same recipe (the session's LocalExecutor run, tests/e2e/conftest.py).
  One job checks both (the one-node run and the requeue), to keep the suite's time budget;
- the same recipe submitted WITHOUT ``--requeue`` (no trainer.resume=auto) and requeued the same way: NeMo-Run
  submits every job with ``sbatch --requeue``, so Slurm requeues it too, and the requeued attempt continues its run
  by itself (rlad_megatron/run_lock.py) instead of refusing "output_dir holds a run": SUCCEEDED, the same metrics.

Without a cluster (not root, Slurm not installed, RLAD_SLURM_UNAVAILABLE set by .ci/run) they skip and say why."""
from __future__ import annotations

import importlib
import io
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("nemo_run")
pytest.importorskip("vllm")

from quickstart_runs import QUICKSTART_STEPS  # noqa: E402
from slurm_cluster import REPO, SlurmCluster, start_or_explain, stop  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = QUICKSTART_STEPS  # the requeued job is compared with the session's uninterrupted quickstart run
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "optim/grad_norm")


@pytest.fixture(scope="module")
def cluster():
    found, why = start_or_explain()
    if found is None:
        pytest.skip(f"Slurm end-to-end tests skipped: {why}")
    yield found
    stop(found)


@pytest.fixture(scope="module")
def slurm_env(cluster: SlurmCluster, tmp_path_factory):
    """NeMo-Run pointed at a private home, and an environment the job inherits (sbatch exports it)."""
    import nemo_run.config

    home = tmp_path_factory.mktemp("nemo_home")
    # NeMo-Run's Slurm scheduler module computes its job-dirs file from NEMORUN_HOME at import time.
    scheduler = importlib.import_module("nemo_run.run.torchx_backend.schedulers.slurm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nemo_run.config, "_NEMORUN_HOME", str(home))
        mp.setattr(scheduler, "SLURM_JOB_DIRS", str(home / ".slurm_jobs"))
        mp.setattr("sys.stdin", io.StringIO())  # NeMo-Run's `invoke` reads stdin; pytest refuses reads
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        # The job runs `torchrun` from PATH and imports this checkout (not whatever is installed).
        mp.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
        yield cluster


@pytest.fixture(scope="module")
def assets(quickstart_assets):
    return quickstart_assets  # the session's (tests/e2e/conftest.py): the same files as the reference run's


def _recipe(assets: dict, out: Path, *, nodes: int = 1, tensor_parallel: int = 2, overrides: list[str] = ()):
    from recipes import quickstart

    recipe = quickstart(**assets, output_dir=str(out), steps=STEPS, nproc=2, tensor_parallel=tensor_parallel)
    recipe = recipe.with_overrides(["trainer.export_hf=true", "trainer.save_every=1", *overrides])
    return recipe.with_layout(nodes=nodes, gpus_per_node=2 // nodes)


def _submit(cluster: SlurmCluster, recipe, name: str, *, requeue: bool = False) -> dict:
    from recipes.executors import launch, slurm_executor

    executor = slurm_executor(recipe, account=cluster.account, partition=cluster.partition, time="00:15:00",
                              requeue=requeue)
    t0 = time.monotonic()
    result = launch(recipe, executor, experiment_name=name)
    result["wall_s"] = time.monotonic() - t0
    print(f"{name}: {result['wall_s']:.0f} s, logs {result.get('logs')}")
    return result


def _states(result: dict) -> list[str]:
    return [str(info.get("status")).upper().split(".")[-1] for info in result["status"].values()]


def _logs_text(result: dict) -> str:
    return "\n".join(Path(p).read_text(errors="replace") for p in result["logs"])


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _check_run(result: dict, out: Path) -> list[dict]:
    assert _states(result) == ["SUCCEEDED"], f"{result['status']}\n{_logs_text(result)[-6000:]}"
    rows = _metrics(out)
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), rows
    for row in rows:  # every step ran the policy update through Megatron and synced the engine
        assert row["optim/applied_updates"] == 1.0, row
        assert row["sync/logprob_max_abs"] < 1e-3, row
        numbers = [v for v in row.values() if isinstance(v, (int, float))]
        assert numbers and all(math.isfinite(v) for v in numbers), row
    config = json.loads((out / "hf" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert list((out / "hf").glob("*.safetensors"))
    return rows


def test_two_nodes_dp2(slurm_env, assets, tmp_path):
    out = tmp_path / "run"
    recipe = _recipe(assets, out, nodes=2, tensor_parallel=1)
    result = _submit(slurm_env, recipe, "slurm-two-nodes")
    _check_run(result, out)
    script = Path(result["sbatch"]).read_text()
    assert "#SBATCH --nodes=2" in script and "--nnodes 2 --nproc-per-node 1" in script
    # Slurm's accounting: the job held both nodes.
    nodes = ",".join(sorted(slurm_env.env["RLAD_SLURM_NODES"].split(",")))
    jobs = slurm_env.run("sacct", "-n", "-X", "-P", "--name", "rlad-rlad.quickstart", "-o", "JobID,NNodes,NodeList")
    assert any(line.split("|")[1] == "2" for line in jobs.splitlines()), (jobs, nodes)


def test_two_nodes_learner_and_teacher_pool(slurm_env, assets, tmp_path):
    """The teacher in a pool of its own on the second node: one torchrun job over both nodes whose last rank serves the
    Megatron teacher (teacher.placement=separate, teacher.ranks=1) while the first trains."""
    out = tmp_path / "run"
    recipe = _recipe(assets, out, nodes=2, tensor_parallel=1,
                     overrides=["teacher.placement=separate", "teacher.ranks=1"])
    result = _submit(slurm_env, recipe, "slurm-teacher-pool")
    rows = _check_run(result, out)
    for row in rows:  # the teacher's log-probs came from the pool, which computed for every step
        assert row["loss/kl/teacher_k3"] > 0 and row["timeline/teacher_busy"] > 0, row
    text = _logs_text(result)
    (learner,) = [line for line in text.splitlines() if "[rlad] teacher pool (megatron)" in line]
    (teacher,) = [line for line in text.splitlines() if "[rlad] teacher pool: job ranks 1..1" in line]
    learner_node, teacher_node = (line.split(" on node ")[1].split()[0].rstrip(")") for line in (learner, teacher))
    nodes = set(slurm_env.env["RLAD_SLURM_NODES"].split(","))
    assert {learner_node, teacher_node} == nodes, (learner, teacher, nodes)  # one node each
    assert f"served {STEPS} round(s)" in text


def test_bad_config_fails_with_the_error_in_the_log(slurm_env, assets, tmp_path):
    missing = tmp_path / "no_such_student"
    recipe = _recipe({**assets, "student": str(missing)}, tmp_path / "run")
    result = _submit(slurm_env, recipe, "slurm-bad-config")
    assert _states(result) == ["FAILED"], result["status"]
    assert result["logs"], result
    # The rank's own one-line error (the model folder is checked before any process group starts).
    rank_lines = [line for line in _logs_text(result).splitlines()
                  if f"rlad-megatron train: model.student={missing}: no such folder" in line]
    assert len(rank_lines) == 1, _logs_text(result)[-4000:]  # said once, by rank 0 (rlad_megatron/refusal.py)
    assert "Traceback" not in _logs_text(result) and "ChildFailedError" not in _logs_text(result)


def _requeue_after_first_checkpoint(cluster: SlurmCluster, recipe, out: Path, name: str, *, requeue: bool) -> dict:
    """Submit ``recipe``, ``scontrol requeue`` its job once its first checkpoint is complete (while later steps still
    run), release the requeued job at once and wait for it; NeMo-Run's result, with ``job_id``."""
    import nemo_run.config

    done: dict = {}
    waiter = threading.Thread(target=lambda: done.update(_submit(cluster, recipe, name, requeue=requeue)))
    waiter.start()
    # ``latest`` is written last: the first checkpoint is complete.
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "latest").exists():
        assert time.monotonic() < deadline and waiter.is_alive(), f"no checkpoint before the job ended: {done}"
        time.sleep(0.5)
    home = nemo_run.config.get_nemorun_home()  # this module's: other sessions' jobs on the cluster are not ours
    jobs = [line.split("|")[0] for line in cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%A|%o").splitlines()
            if home in line and name in line]
    assert len(jobs) == 1, jobs
    logged_before = len(_metrics(out)) if (out / "metrics.jsonl").exists() else 0
    cluster.run("scontrol", "requeue", jobs[0])
    assert logged_before < STEPS, "the job finished before it could be requeued"
    # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now, as an operator would.
    for _ in range(60):
        if "BeginTime" in cluster.run("squeue", "-h", "-j", jobs[0], "-o", "%r", check=False):
            cluster.run("scontrol", "update", f"jobid={jobs[0]}", "StartTime=now")
            break
        time.sleep(0.5)
    waiter.join(timeout=900)
    assert not waiter.is_alive() and done, "the requeued job did not finish"
    restarts = cluster.run("scontrol", "show", "job", jobs[0], check=False)
    assert "Restarts=1" in restarts or "resumed from" in _logs_text(done), restarts
    return {**done, "job_id": jobs[0]}


def _matches(reference: list[dict], got: list[dict]) -> None:
    for ref, val in zip(reference, got):
        for key in KEYS:
            assert val[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"step {ref['step']} {key}"


def _reference(request) -> list[dict]:
    # Asked for here, not as an argument: a session fixture would be made before the cluster fixture could skip.
    reference = _metrics(request.getfixturevalue("quickstart_uninterrupted")[1])
    assert [row["step"] for row in reference] == list(range(1, STEPS + 1)), reference
    return reference


def test_one_node_tp2_requeued_job_resumes_and_matches_the_uninterrupted_run(slurm_env, assets, tmp_path, request):
    from recipes.executors import with_auto_resume

    reference = _reference(request)
    out = tmp_path / "run"
    done = _requeue_after_first_checkpoint(slurm_env, with_auto_resume(_recipe(assets, out)), out, "slurm-requeue",
                                           requeue=True)
    got = _check_run(done, out)
    # one node: the loopback launcher starts the ranks (every socket of the job on the loopback interface)
    script = Path(done["sbatch"]).read_text()
    assert "python -m rlad_megatron.launch_local --nproc-per-node=2 -m rlad_megatron.cli train " in script
    assert "torchrun" not in script
    text = _logs_text(done)
    assert "DUE TO JOB REQUEUE" in text and "resumed from" in text, text[-4000:]
    _matches(reference, got)


def test_a_job_launched_without_requeue_resumes_when_slurm_requeues_it(slurm_env, assets, tmp_path, request):
    reference = _reference(request)
    out = tmp_path / "run"
    recipe = _recipe(assets, out)
    assert "trainer.resume=auto" not in recipe.train_args()
    done = _requeue_after_first_checkpoint(slurm_env, recipe, out, "slurm-no-requeue-flag", requeue=False)
    got = _check_run(done, out)
    script = Path(done["sbatch"]).read_text()
    assert "#SBATCH --requeue" not in script and "trainer.resume=auto" not in script
    text = _logs_text(done)
    assert "DUE TO JOB REQUEUE" in text, text[-4000:]  # the first attempt's log, kept (--open-mode=append)
    assert "Slurm requeued this job: continuing its run in" in text and "resumed from" in text, text[-4000:]
    assert "already holds a run" not in text
    _matches(reference, got)
