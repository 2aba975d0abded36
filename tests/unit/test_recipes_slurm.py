"""Recipes through real NeMo-Run executors: Slurm dry runs render the sbatch script (nodes, GPUs, the srun line --
the loopback launcher on one node, NeMo-Run's torchrun on several --, environment, container); the CLI; executor
argument errors. Nothing is submitted."""
from __future__ import annotations

import io
import re

import pytest

pytest.importorskip("nemo_run")

from recipes import get_recipe  # noqa: E402
from recipes.cli import main  # noqa: E402
from recipes.executors import launch, local_executor, rendered_sbatch, slurm_executor, train_task  # noqa: E402

MOUNTS = ["/lustre/models:/models", "/lustre/data:/data", "/lustre/results:/results"]


@pytest.fixture(autouse=True)
def nemorun_home(tmp_path, monkeypatch):
    import nemo_run.config

    home = tmp_path / "nemo_home"
    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(home))
    # NeMo-Run's packaging shells out through `invoke`, which reads stdin; pytest's captured stdin refuses reads.
    monkeypatch.setattr("sys.stdin", io.StringIO())
    return home


def _dry_run(recipe, **kwargs):
    executor = slurm_executor(recipe, account="acct", partition="batch", time="02:00:00",
                              container_image="nvcr.io/acme/rlad-megatron:0.1.0", container_mounts=MOUNTS, **kwargs)
    result = launch(recipe, executor, dryrun=True)
    return rendered_sbatch(result["experiment_dir"], recipe)


def _run_line(script: str) -> str:
    """The srun line that starts the trainer's ranks."""
    lines = [line for line in script.splitlines() if " -m rlad_megatron.cli train " in line]
    assert len(lines) == 1 and lines[0].startswith("srun "), lines
    return lines[0]


@pytest.mark.parametrize("name,nodes", [("math_qwen3_8b_base", 8), ("logic_qwen3_0p6b_grpo", 1)])
def test_slurm_dry_run_renders_the_job(name, nodes):
    recipe = get_recipe(name)
    script = _dry_run(recipe)
    for line in (f"#SBATCH --nodes={nodes}", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --account=acct", "#SBATCH --partition=batch", "#SBATCH --time=02:00:00",
                 "#SBATCH --exclusive"):
        assert line in script.splitlines(), line
    for key, value in recipe.env.items():
        assert f"export {key}={value}" in script
    run = _run_line(script)
    assert run.startswith("srun ") and "--container-image nvcr.io/acme/rlad-megatron:0.1.0" in run
    assert "--container-mounts " + ",".join(MOUNTS) in run
    if nodes == 1:  # one machine: the loopback launcher starts the 8 ranks (every socket on the loopback interface)
        assert " python -m rlad_megatron.launch_local --nproc-per-node=8 -m rlad_megatron.cli train " in run
        assert "torchrun" not in script and "--rdzv" not in run
    else:  # several nodes: NeMo-Run's torchrun, whose rendezvous listens on the network for the other nodes
        assert f"torchrun --rdzv-backend c10d" in run
        assert re.search(rf"--nnodes {nodes} --nproc-per-node 8 ", run)
    assert " ".join(recipe.train_args()[1:4]) in run
    assert f"loss.algorithm={recipe.config.loss.algorithm}" in run
    if name.endswith("_grpo"):
        assert "model.teacher" not in run


def test_cli_slurm_dry_run_with_layout_and_overrides(nemorun_home, capsys):
    code = main(["logic_qwen3_1p7b_kdrl", "--executor", "slurm", "--dryrun", "--account", "acct", "--nodes", "2",
                 "--mounts", ",".join(MOUNTS[:2]), "--container-image", "img:1", "--env", "NCCL_DEBUG=INFO",
                 "trainer.steps=11", "--arg", "max_response=2048"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "learner TP=1 x PP=1 x DP=16 on 16 GPUs" in out
    (path,) = list(nemorun_home.glob("experiments/*/*/logic_qwen3_1p7b_kdrl_2k_sbatch.sh"))
    script = path.read_text()
    assert "#SBATCH --nodes=2" in script and "export NCCL_DEBUG=INFO" in script
    run = _run_line(script)
    assert "--nnodes 2 --nproc-per-node 8" in run and "trainer.steps=11" in run and "loss.algorithm=kdrl" in run
    assert "rollout.max_new_tokens=2048" in run and "--container-mounts " + ",".join(MOUNTS[:2]) in run


def test_cli_reports_placement_errors(capsys):
    code = main(["math_qwen3_8b_base", "--executor", "slurm", "--dryrun", "--account", "a",
                 "parallel.tensor_parallel=8", "parallel.pipeline_parallel=2", "--nodes", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "8 learner GPUs cannot hold TP=8 x PP=2 = 16 GPUs per replica" in err


def test_cli_show_and_list(capsys):
    assert main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "math_qwen3_8b_base_grpo" in listing and "quickstart" in listing
    assert main(["logic_qwen3_0p6b", "--show", "loss.alpha=0.7"]) == 0
    out = capsys.readouterr().out
    assert "-m rlad_megatron.cli train " in out and "loss.alpha=0.7" in out
    assert main(["logic_qwen3_0p6b", "--show", "loss.nope=1"]) == 2
    assert "unknown config key loss.nope" in capsys.readouterr().err


def test_executor_argument_errors():
    recipe = get_recipe("math_qwen3_8b_base")
    with pytest.raises(ValueError, match=r"needs 8 nodes x 8 GPUs; the local executor runs on this machine only"):
        local_executor(recipe)
    with pytest.raises(ValueError, match="needs an account"):
        slurm_executor(recipe, account="")
    with pytest.raises(ValueError, match="expected host_path:container_path"):
        slurm_executor(recipe, account="a", container_mounts=["/lustre"])
    with pytest.raises(ValueError, match="--ssh-user"):
        slurm_executor(recipe, account="a", ssh_host="login")


def test_local_executor_and_task(tmp_path):
    from recipes import quickstart

    recipe = quickstart("/s", "/t", "/train.jsonl", nproc=2)
    executor = local_executor(recipe, env={"EXTRA": "1"})
    assert (executor.nnodes(), executor.nproc_per_node()) == (1, 2)
    assert executor.env_vars["OMP_NUM_THREADS"] == "1" and executor.env_vars["EXTRA"] == "1"
    task = train_task(recipe)
    assert (task.path, task.m, task.entrypoint) == ("rlad_megatron.cli", True, "python")
    assert task.args == recipe.train_args()
    task = train_task(recipe, local=True)  # on this machine: torchrun with every socket on the loopback interface
    assert (task.path, task.m) == ("rlad_megatron.launch_local", True)
    assert task.args == ["--nproc-per-node=2", "-m", "rlad_megatron.cli", *recipe.train_args()]


def test_cpu_recipe_asks_slurm_for_no_gpus():
    from recipes import quickstart

    script = _dry_run(quickstart("/s", "/t", "/train.jsonl", output_dir="/results/qs"))
    assert "--gpus-per-node" not in script and "#SBATCH --nodes=1" in script
    assert "rlad_megatron.launch_local --nproc-per-node=2 " in _run_line(script)


def test_local_submission_uses_the_experiment_folder_and_refuses_another_job_dir(nemorun_home):
    from recipes import quickstart

    recipe = quickstart("/s", "/t", "/train.jsonl", output_dir="/abs/out")
    executor = slurm_executor(recipe, account="acct")
    assert executor.tunnel.job_dir == ""  # NeMo-Run then submits from the experiment's own folder
    with pytest.raises(ValueError, match=r"--job-dir /shared/jobs: without --ssh-host .* NEMORUN_HOME"):
        slurm_executor(recipe, account="acct", job_dir="/shared/jobs")
    slurm_executor(recipe, account="acct", job_dir=str(nemorun_home / "experiments"))  # the same folder: fine
    tunnel = slurm_executor(recipe, account="acct", job_dir="/lustre/me/jobs", ssh_host="login", ssh_user="me").tunnel
    assert tunnel.job_dir == "/lustre/me/jobs"
    # The rendered job reads its script and writes its logs where the dry run put them.
    result = launch(recipe, executor, dryrun=True)
    script = rendered_sbatch(result["experiment_dir"], recipe)
    assert f"#SBATCH --output={result['experiment_dir']}/" in script


def test_rendered_job_has_absolute_paths(nemorun_home, tmp_path, monkeypatch):
    from recipes import quickstart

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    recipe = quickstart("Qwen/Qwen3-0.6B", "/t", "data/train.jsonl", output_dir="runs/qs")
    run = _run_line(_dry_run_local(recipe))
    assert f"trainer.output_dir={tmp_path}/runs/qs " in run + " "
    assert f"data.train_files={tmp_path}/data/train.jsonl" in run
    assert "model.student=Qwen/Qwen3-0.6B" in run  # not a local path: left as given
    with pytest.raises(ValueError, match=r"trainer.output_dir='runs/qs' is relative: inside the container"):
        _dry_run(recipe)


def _dry_run_local(recipe, **kwargs):
    result = launch(recipe, slurm_executor(recipe, account="acct", **kwargs), dryrun=True)
    return rendered_sbatch(result["experiment_dir"], recipe)


def test_requeue_renders_requeue_and_resume_auto(nemorun_home, capsys):
    from recipes import quickstart
    from recipes.executors import with_auto_resume

    recipe = quickstart("/s", "/t", "/train.jsonl", output_dir="/abs/out")
    with pytest.raises(ValueError, match="--requeue needs checkpoints .* trainer.save_every"):
        with_auto_resume(recipe)
    recipe = with_auto_resume(recipe.with_overrides(["trainer.save_every=1"]))
    script = _dry_run_local(recipe, requeue=True)
    assert "#SBATCH --requeue" in script.splitlines() and "#SBATCH --open-mode=append" in script.splitlines()
    assert "trainer.resume=auto" in _run_line(script)
    assert "#SBATCH --requeue" not in _dry_run_local(recipe)
    code = main(["logic_qwen3_0p6b", "--executor", "slurm", "--dryrun", "--account", "a", "--requeue",
                 "trainer.save_every=0"])
    assert code == 2 and "--requeue needs checkpoints" in capsys.readouterr().err
    code = main(["logic_qwen3_0p6b", "--executor", "slurm", "--dryrun", "--account", "a", "--requeue",
                 "trainer.save_every=10"])
    assert code == 0
    (path,) = list(nemorun_home.glob("experiments/rlad-logic_qwen3_0p6b*/*/*_sbatch.sh"))
    assert "#SBATCH --requeue" in path.read_text() and "trainer.resume=auto" in path.read_text()


def test_max_restarts_is_local_and_needs_checkpoints(nemorun_home, capsys):
    from recipes import quickstart

    recipe = quickstart("/s", "/t", "/train.jsonl", output_dir="/abs/out")
    with pytest.raises(ValueError, match="--max-restarts is for the local executor; on Slurm use --requeue"):
        launch(recipe, slurm_executor(recipe, account="acct"), dryrun=True, max_restarts=1)
    with pytest.raises(ValueError, match="--max-restarts is for the local executor"):
        train_task(recipe, max_restarts=2)
    task = train_task(recipe, local=True, max_restarts=2)
    assert (task.path, task.m) == ("rlad_megatron.launch_local", True)
    assert task.args[:2] == ["--nproc-per-node=2", "--max-restarts=2"]
    assert task.args[2:4] == ["-m", "rlad_megatron.cli"] and task.args[4:] == recipe.train_args()
    code = main(["logic_qwen3_0p6b", "--show", "--max-restarts", "1", "trainer.save_every=0"])
    assert code == 2 and "--max-restarts needs checkpoints" in capsys.readouterr().err
