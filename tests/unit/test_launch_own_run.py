"""`rlad-megatron plan | launch --config my_run.yaml` and recipes with other models (issue 28): a run config becomes a
recipe; the memory plan reads each model's own config.json (a dense and a MoE pair, written here as config.json-only
folders with the real Qwen3 shapes) and never plans one model with another's shape; `--rollout-gpus` launches
asynchronous rollouts, `--teacher-gpus` a vLLM teacher pool (engines, not torchrun ranks); the launching machine
checks that the job will see its files (container mounts included)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recipes.cli import main as recipes_main
from recipes.job_checks import file_problems, host_path, parse_mounts
from recipes.own_run import recipe_from_config
from rlad_megatron.cli import main as cli_main

#: config.json of the Qwen3 checkpoints (Hugging Face), the fields that differ between them.
QWEN3 = {
    "Qwen3-1.7B": dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16, num_hidden_layers=28,
                       num_key_value_heads=8, tie_word_embeddings=True),
    "Qwen3-4B": dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32, num_hidden_layers=36,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "Qwen3-32B": dict(hidden_size=5120, intermediate_size=25600, num_attention_heads=64, num_hidden_layers=64,
                      num_key_value_heads=8, tie_word_embeddings=False),
    "Qwen3-30B-A3B": dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe", hidden_size=2048,
                          intermediate_size=6144, moe_intermediate_size=768, num_attention_heads=32,
                          num_hidden_layers=48, num_key_value_heads=4, num_experts=128, num_experts_per_tok=8,
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                          router_aux_loss_coef=0.001, tie_word_embeddings=False),
}
COMMON = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "head_dim": 128,
          "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_scaling": None,
          "rope_theta": 1000000, "torch_dtype": "bfloat16", "use_sliding_window": False, "vocab_size": 151936}


def write_model(root: Path, name: str) -> Path:
    """A folder holding only ``config.json`` of Qwen3 checkpoint ``name`` (no weights: plans need none)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**COMMON, **QWEN3[name]}))
    return folder


def write_run(folder: Path, student: str, teacher: str, *, name: str = "my_run", extra: str = "") -> Path:
    """``folder/<name>.yaml`` naming ``models/<student>`` and ``models/<teacher>`` relative to itself."""
    for model in (student, teacher):
        write_model(folder / "models", model)
    path = folder / f"{name}.yaml"
    path.write_text(f"""model:
  student: models/{student}
  teacher: models/{teacher}
  params_dtype: bfloat16
data:
  task: math
  train_files: [data/train.jsonl]
  prompts_per_step: 64
  max_prompt_tokens: 1024
rollout:
  max_new_tokens: 4096
  dtype: bfloat16
trainer:
  max_tokens_per_micro_batch: 8192
  output_dir: runs/{name}
{extra}""")
    return path


def _weights(out: str, who: str) -> str:
    found = re.search(rf"{who} weights +[0-9.]+ [GM]iB +\(([0-9.]+B) params", out)
    assert found, out
    return found.group(1)


def test_plan_reads_a_dense_pair_from_their_config_json(tmp_path, capsys):
    run = write_run(tmp_path, "Qwen3-4B", "Qwen3-32B")
    code = cli_main(["plan", "--config", str(run), "--gpu", "h100", "--nodes", "2"])
    out = capsys.readouterr().out
    assert "student: Qwen3-4B, 4.02B parameters, dense, 36 layers" in out
    assert "teacher: Qwen3-32B, 32.76B parameters, dense, 64 layers" in out
    assert f"shape from {tmp_path}/models/Qwen3-4B/config.json" in out
    assert "16 GPUs (2 node(s) x 8): learner TP=1 x PP=1 x DP=16" in out
    assert (_weights(out, "student"), _weights(out, "teacher")) == ("4.02B", "32.76B")
    assert code == 1 and "DOES NOT FIT in 79.6" in out  # a 32B teacher at TP=1 does not fit an H100


def test_plan_reads_a_moe_pair_from_their_config_json(tmp_path, capsys):
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-30B-A3B")
    code = cli_main(["plan", "--config", str(run), "--gpu", "h200", "parallel.recompute=full"])
    out = capsys.readouterr().out
    assert "student: Qwen3-1.7B, 1.72B parameters, dense, 28 layers" in out
    assert ("teacher: Qwen3-30B-A3B, 30.53B parameters, MoE: 128 experts x 768, top-8, 3.35B active per token, 48 "
            "layers") in out
    assert (_weights(out, "student"), _weights(out, "teacher")) == ("1.72B", "30.53B")
    assert "every GPU holds all of them (EP=1)" in out
    assert code == 0 and "fits" in out, out


def test_a_recipe_plans_the_models_it_is_given_not_its_own(tmp_path, capsys):
    """The issue: `model.student=/models/Qwen3-4B model.teacher=/models/Qwen3-32B` on `logic_qwen3_1p7b --plan`
    planned the recipe's own 1.7B student and 8B teacher."""
    student, teacher = write_model(tmp_path, "Qwen3-4B"), write_model(tmp_path, "Qwen3-32B")
    recipes_main(["logic_qwen3_1p7b", "--plan", f"model.student={student}", f"model.teacher={teacher}"])
    out = capsys.readouterr().out
    assert (_weights(out, "student"), _weights(out, "teacher")) == ("4.02B", "32.76B")
    assert "1.72B" not in out and "8.19B" not in out


def test_unreachable_models_are_never_planned_with_another_shape(tmp_path, capsys):
    code = recipes_main(["logic_qwen3_1p7b", "--plan", "model.student=/nowhere/Qwen3-4B"])
    err = capsys.readouterr().err
    assert code == 2 and "model.student=/nowhere/Qwen3-4B: no config.json" in err
    assert "--student-shape NAME (known: Qwen3-0.6B" in err and "Qwen3-30B-A3B" in err
    # named explicitly, the known shape is planned (the recipe's own teacher, at its own path, keeps its table shape)
    assert recipes_main(["logic_qwen3_1p7b", "--plan", "model.student=/nowhere/Qwen3-4B",
                         "--student-shape", "Qwen3-4B"]) in (0, 1)  # planned (fits or not)
    out = capsys.readouterr().out
    assert (_weights(out, "student"), _weights(out, "teacher")) == ("4.02B", "8.19B")
    assert "shape from --student-shape Qwen3-4B" in out and "the recipe's table: the folder is not reachable" in out
    # a name that contradicts a reachable config.json is refused
    folder = write_model(tmp_path, "Qwen3-32B")
    assert recipes_main(["logic_qwen3_1p7b", "--plan", f"model.student={folder}", "--student-shape",
                         "Qwen3-4B"]) == 2
    assert "--student-shape Qwen3-4B does not match model.student=" in capsys.readouterr().err
    assert recipes_main(["logic_qwen3_1p7b", "--plan", "--student-shape", "Qwen3-9B"]) == 2
    assert "--student-shape Qwen3-9B: not a known shape" in capsys.readouterr().err


def test_the_math_recipe_takes_another_student(tmp_path, capsys):
    """The issue: `--arg student=Qwen3-1.7B` on the math recipe is refused, with no way to change the pair."""
    assert recipes_main(["math_qwen3_8b_base", "--arg", "student=Qwen3-1.7B", "--plan"]) == 2
    assert "model.student=FOLDER" in capsys.readouterr().err
    student = write_model(tmp_path, "Qwen3-1.7B")
    assert recipes_main(["math_qwen3_8b_base", "--plan", f"model.student={student}"]) == 0
    out = capsys.readouterr().out
    assert "student: Qwen3-1.7B, 1.72B parameters" in out and "teacher: Qwen3-32B, 32.76B parameters" in out
    assert (_weights(out, "student"), _weights(out, "teacher")) == ("0.43B", "8.19B")  # per GPU at TP=4


def test_rollout_gpus_launch_asynchronous_rollouts(tmp_path, capsys, monkeypatch):
    """The issue: "give rollout_gpus >= 1 (e.g. --rollout-gpus 8)" named a flag that did not exist."""
    pytest.importorskip("nemo_run")
    import io

    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    async_run = ["rollout.placement=disaggregated", "rollout.mode=async"]
    assert recipes_main(["logic_qwen3_0p6b", "--show", *async_run]) == 2
    assert "--rollout-gpus 4: one engine per learner replica" in capsys.readouterr().err
    code = recipes_main(["logic_qwen3_0p6b", *async_run, "--rollout-gpus", "4", "--executor", "slurm", "--dryrun",
                         "--account", "acct", "--partition", "batch"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "learner TP=1 x PP=1 x DP=4 on 4 GPUs" in captured.out
    assert "4 vLLM engine(s) of TP=1 on 4 GPUs of their own" in captured.out
    script = next((tmp_path / "nemo").rglob("*_sbatch.sh")).read_text()
    assert "#SBATCH --gpus-per-node=8" in script  # the engines' GPUs are allocated too
    # the loopback launcher (one node) starts the learner's ranks only
    assert "python -m rlad_megatron.launch_local --nproc-per-node=4 -m rlad_megatron.cli train " in script
    assert "rollout.mode=async" in script


def test_teacher_gpus_of_a_vllm_teacher_pool(tmp_path, capsys, monkeypatch):
    """Issues 28 and 32: a vLLM teacher pool's GPUs were named by placement's error ("choose teacher_gpus") but no
    flag set them, and its engine processes were counted as torchrun ranks."""
    pytest.importorskip("nemo_run")
    import io

    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B")
    pool = ["teacher.placement=separate", "teacher.source=vllm"]
    # the default: one teacher engine per learner replica (8 GPUs: DP=4 learner ranks, 4 teacher engines)
    assert cli_main(["plan", "--config", str(run), "--gpu", "h100", *pool]) == 0
    default = capsys.readouterr().out
    assert "8 GPUs (1 node(s) x 8): learner TP=1 x PP=1 x DP=4 on 4 GPUs" in default
    assert "teacher: vLLM scorer in 4 engine processes on GPUs of their own (one per learner replica)" in default
    assert "torchrun: 4 rank(s) per node; the engines run in processes of their own on each node's last 4" in default
    assert "teacher pool: memory plan per GPU (H100" in default and "teacher engine weights" in default
    assert "this layout (learner 4, rollout -, teacher 4 GPUs)" in default
    # `plan --teacher-gpus N`: the same plan when N fits; a wrong N is refused naming the flag and the count that fits
    assert cli_main(["plan", "--config", str(run), "--gpu", "h100", *pool, "--teacher-gpus", "4"]) == 0
    assert capsys.readouterr().out == default
    assert cli_main(["plan", "--config", str(run), "--gpu", "h100", *pool, "--teacher-gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "(--teacher-gpus 2) leave DP=6 replicas" in err and "give teacher_gpus=4 (--teacher-gpus 4)" in err
    assert "Traceback" not in err
    assert cli_main(["plan", "--config", str(run), "--teacher-gpus", "2"]) == 2  # no teacher pool in the config
    assert "set teacher.placement=separate" in capsys.readouterr().err
    # with asynchronous rollouts on 2 nodes x 6: 2 ranks per node, then 2 rollout and 2 teacher engines per node
    both = [*pool, "rollout.placement=disaggregated", "rollout.mode=async"]
    slurm = ["--executor", "slurm", "--dryrun", "--account", "acct", "--nodes", "2", "--gpus-per-node", "6"]
    assert recipes_main(["--config", str(run), *slurm, *both]) == 2
    assert "(--rollout-gpus 4: one engine per learner replica, with --teacher-gpus 4)" in capsys.readouterr().err
    assert recipes_main(["--config", str(run), *slurm, *both, "--rollout-gpus", "4", "--teacher-gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "12 GPUs (2 node(s) x 6): learner TP=1 x PP=1 x DP=4 on 4 GPUs" in out and "torchrun: 2 rank(s)" in out
    script = next((tmp_path / "nemo").rglob("*_sbatch.sh")).read_text()
    assert "#SBATCH --gpus-per-node=6" in script  # the engines' GPUs are allocated too
    assert re.search(r"--nproc-per-node[= ]2\b", script), script  # but only the learner's ranks are torchrun's
    # a named recipe takes the flag too (the vLLM teacher of logic_qwen3_0p6b in a pool of its own)
    assert recipes_main(["logic_qwen3_0p6b", "--show", *pool, "--teacher-gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "DP=4 on 4 GPUs" in out and "teacher.placement=separate" in out and "teacher.source=vllm" in out


def test_a_run_config_becomes_a_recipe_with_absolute_paths(tmp_path, capsys):
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B", name="my run.v2")
    recipe = recipe_from_config(run, ["trainer.steps=7"], nodes=2, gpus_per_node=4)
    assert recipe.name == "my_run_v2" and (recipe.nodes, recipe.gpus_per_node, recipe.gpu) == (2, 4, True)
    assert recipe.config.model.student == str(tmp_path / "models" / "Qwen3-1.7B")
    assert recipe.config.data.train_files == [str(tmp_path / "data" / "train.jsonl")]
    assert recipe.config.trainer.output_dir == str(tmp_path / "runs" / "my run.v2")
    assert recipe.config.trainer.steps == 7
    # `python -m recipes --config` is the same, overrides after it (a `key=value` is never taken for a recipe name)
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B")
    assert recipes_main(["--config", str(run), "trainer.steps=7", "--show", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert f"model.student={tmp_path}/models/Qwen3-1.7B" in out and "trainer.steps=7" in out
    assert f"trainer.output_dir={tmp_path}/runs/my_run" in out and "DP=4" in out


def test_a_recipe_takes_a_config_file_on_top(tmp_path, capsys):
    changes = tmp_path / "changes.yaml"
    changes.write_text("trainer:\n  steps: 7\ndata:\n  train_files: [kk/train.jsonl]\n  fields: {prompt: quiz}\n")
    assert recipes_main(["logic_qwen3_0p6b", "--config", str(changes), "--show", "loss.alpha=0.3"]) == 0
    out = capsys.readouterr().out
    assert "trainer.steps=7" in out and f"data.train_files={tmp_path}/kk/train.jsonl" in out
    assert "data.fields.prompt=quiz" in out and "loss.alpha=0.3" in out
    assert "model.student=/models/Qwen3-0.6B" in out and "data.eval_files=/data/kk/test.jsonl" in out


def test_launch_refuses_a_plan_that_does_not_fit(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nemo_run")
    import io

    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    run = write_run(tmp_path, "Qwen3-4B", "Qwen3-32B")
    slurm = ["--executor", "slurm", "--dryrun", "--account", "acct", "--nodes", "2", "--gpu", "h100"]
    assert cli_main(["launch", "--config", str(run), *slurm]) == 2
    err = capsys.readouterr().err
    assert "the run needs about" in err and "the GPU (H100) has 79.6 GiB" in err and "teacher weights" in err
    assert f"(print the plan: rlad-megatron plan --config {run})" in err
    assert not (tmp_path / "nemo").exists()  # nothing rendered
    assert cli_main(["launch", "--config", str(run), *slurm, "--ignore-memory-plan"]) == 0
    captured = capsys.readouterr()
    assert "launching although the memory plan does not fit" in captured.err
    # a dry run warns about what the job would not find (this data file does not exist)
    assert f"warning: data.train_files: data file or folder not found: {tmp_path}/data/train.jsonl" in captured.err
    script = next((tmp_path / "nemo").rglob("*_sbatch.sh")).read_text()
    assert "#SBATCH --nodes=2" in script and f"model.teacher={tmp_path}/models/Qwen3-32B" in script


def test_a_missing_file_stops_the_launch_before_anything_is_submitted(tmp_path, capsys, monkeypatch):
    pytest.importorskip("nemo_run")
    import nemo_run.config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo"))
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B")
    code = cli_main(["launch", "--config", str(run), "--cpu", "--gpus-per-node", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: model.student={tmp_path}/models/Qwen3-1.7B is not a complete Hugging Face model folder" in err
    assert f"error: data.train_files: data file or folder not found: {tmp_path}/data/train.jsonl" in err
    assert "--no-file-checks" in err and not (tmp_path / "nemo").exists()


def test_in_a_container_every_path_must_be_mounted(tmp_path):
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B")
    config = recipe_from_config(run).config
    models, data = f"{tmp_path}/models:/models", f"{tmp_path}/data:/data"
    config.model.student, config.model.teacher = "/models/Qwen3-1.7B", "/models/Qwen3-4B"
    config.data.train_files = ["/data/train.jsonl"]
    config.trainer.output_dir = "/results/my_run"
    problems = file_problems(config, container=True, mounts=[models, data])
    assert len(problems) == 1 and problems[0].startswith("trainer.output_dir=/results/my_run is under none of")
    assert "would vanish with the container" in problems[0] and "--mounts HOST_FOLDER:/results" in problems[0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    problems = file_problems(config, container=True, mounts=[models, data, f"{tmp_path}/out:/results"])
    # the models and data are checked where this machine sees them: the data is fine, the models have no weights
    assert problems and all(p.startswith(("model.student", "model.teacher")) for p in problems), problems
    assert f"(the container's /models/Qwen3-1.7B)" in problems[0]
    pairs = parse_mounts(["/lustre/a:/a", "/lustre/ab/c:/a/b:ro"])
    assert host_path("/a/b/x", pairs) == "/lustre/ab/c/x" and host_path("/a/x", pairs) == "/lustre/a/x"
    assert host_path("/ab", pairs) is None


def test_the_cli_lists_and_runs_launch_and_plan(capsys):
    with pytest.raises(SystemExit):
        cli_main(["-h"])
    out = capsys.readouterr().out
    assert "launch" in out and "plan" in out
    with pytest.raises(SystemExit):
        cli_main(["plan", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: rlad-megatron plan") and "--rollout-gpus" in out and "--student-shape" in out
    assert "--teacher-gpus" in out
    assert cli_main(["launch", "my_run.yaml"]) == 2
    assert "my_run.yaml is not a recipe name: give a run config as --config my_run.yaml" in capsys.readouterr().err


def test_values_the_command_line_cannot_carry_reach_the_job_in_a_file(tmp_path, capsys, monkeypatch):
    """A prompt with spaces cannot be one word of the sbatch script's torchrun line: the job reads the loaded config
    from a file written next to the run's config (content-addressed, so a queued job reads what was launched)."""
    pytest.importorskip("nemo_run")
    import io

    import nemo_run.config
    import yaml

    from rlad_megatron.config import load_run_config

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo"))
    monkeypatch.setattr("sys.stdin", io.StringIO())
    run = write_run(tmp_path, "Qwen3-1.7B", "Qwen3-4B")
    text = run.read_text().replace("  task: math\n", "  task: math\n  task_options: {instruction: \"Think it "
                                                     "through, then answer: 'x = ...'.\"}\n")
    run.write_text(text)
    slurm = ["--executor", "slurm", "--dryrun", "--account", "acct", "--gpu", "h200", "--no-file-checks"]
    assert recipes_main(["--config", str(run), *slurm, "trainer.steps=5"]) == 0
    out = capsys.readouterr().out
    written = sorted((tmp_path / ".rlad_jobs").glob("my_run-*.yaml"))
    assert len(written) == 1 and f"the job reads its config from {written[0]}" in out
    script = next((tmp_path / "nemo").rglob("*_sbatch.sh")).read_text()
    assert f"-m rlad_megatron.cli train --config {written[0]}" in script
    job = load_run_config(written[0])  # what the job reads: the launched config, every path absolute
    assert job.data.task_options == {"instruction": "Think it through, then answer: 'x = ...'."}
    assert job.trainer.steps == 5 and job.model.student == str(tmp_path / "models" / "Qwen3-1.7B")
    assert yaml.safe_load(written[0].read_text())["data"]["train_files"] == [str(tmp_path / "data" / "train.jsonl")]
    # the same config again: the same file; in a container its folder must be mounted
    assert recipes_main(["--config", str(run), *slurm, "trainer.steps=5"]) == 0
    assert sorted((tmp_path / ".rlad_jobs").glob("*.yaml")) == written
    capsys.readouterr()
    container = ["--container-image", "img.sqsh", "--student-shape", "Qwen3-1.7B", "--teacher-shape", "Qwen3-4B"]
    code = recipes_main(["--config", str(run), *slurm, *container, "trainer.steps=5", "--mounts", "/lustre/x:/x"])
    assert code == 2 and "under none of the container's mounts: mount" in capsys.readouterr().err
    assert recipes_main(["--config", str(run), *slurm, *container, "trainer.steps=5",
                         "--mounts", f"{tmp_path}:/job"]) == 0
    assert any(f"train --config /job/.rlad_jobs/{written[0].name}" in p.read_text()
               for p in (tmp_path / "nemo").rglob("*_sbatch.sh"))
