"""Bad inputs to `train`, `eval` and `convert` get one clear line (exit 2) before any model loads, process group
starts or file is written: missing or incomplete model folders, --tp 0, a non-empty --out, an unknown engine
option, an empty data file, a response budget larger than the model's context."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlad_megatron.cli import main
from rlad_megatron.eval.runner import response_budget
from rlad_megatron.models.folder_check import ModelFolderError, check_model_folder
from rlad_megatron.tiny.hf_model import make_tiny_hf_model


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_hf_model(tmp_path_factory.mktemp("m") / "tiny", family="llama", hidden_size=64,
                              intermediate_size=128, num_heads=2, num_kv_heads=2, seed=0)


def test_model_folder_problems_are_named(tmp_path: Path, model: Path) -> None:
    check_model_folder(model, "model.student")
    with pytest.raises(ModelFolderError, match=r"model\.student=.*/nope: no such folder; .*hf download ORG/NAME "
                                               r"--local-dir .*/nope$"):
        check_model_folder(tmp_path / "nope", "model.student")
    with pytest.raises(ModelFolderError, match=r"no such folder \(/.*/Qwen/Qwen3-0\.6B-nonexistent\)") as err:
        check_model_folder("Qwen/Qwen3-0.6B-nonexistent", "model.teacher")
    assert "huggingface-cli" not in str(err.value) and "--allow-download" not in str(err.value)
    with pytest.raises(ModelFolderError, match="or add --allow-download to read the hub model Qwen/Qwen3"):
        check_model_folder("Qwen/Qwen3-0.6B-nonexistent", "--model")
    check_model_folder("Qwen/Qwen3-0.6B-nonexistent", "--model", allow_download=True)  # left to the hub
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(ModelFolderError, match=r"config\.json is not valid JSON"):
        check_model_folder(broken, "--hf")
    (broken / "config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match=r"missing model\.safetensors .*, a tokenizer"):
        check_model_folder(broken, "--hf")
    (broken / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    with pytest.raises(ModelFolderError, match=r"missing model-1\.safetensors \(listed in"):
        check_model_folder(broken, "--hf", tokenizer=False)


def test_train_with_a_missing_model_is_one_line_without_a_hub_lookup(tmp_path: Path, capsys) -> None:
    started = time.perf_counter()
    rc = main(["train", f"model.student={tmp_path / 'student'}", "loss.algorithm=grpo",
               "data.train_files=a.jsonl", f"trainer.output_dir={tmp_path / 'out'}"])
    assert rc == 2 and time.perf_counter() - started < 5
    assert f"model.student={tmp_path / 'student'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_relative_model_folder_in_a_config_is_never_taken_for_a_hub_id(tmp_path: Path, capsys) -> None:
    """Issue 28: ``model.student: models/Qwen3-0.6B`` was taken for a hub id, with a ``huggingface-cli`` command the
    environment does not ship. Now it is the folder next to the config file, reported missing with ``hf download``."""
    config = tmp_path / "cfg" / "run.yaml"
    config.parent.mkdir()
    config.write_text("model: {student: models/Qwen3-0.6B}\nloss: {algorithm: grpo}\n"
                      "data: {train_files: [train.jsonl]}\n")
    assert main(["train", "--config", str(config), f"trainer.output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert f"model.student={tmp_path}/cfg/models/Qwen3-0.6B: no such folder" in err
    assert f"hf download ORG/NAME --local-dir {tmp_path}/cfg/models/Qwen3-0.6B" in err
    assert "huggingface-cli" not in err and "hub id" not in err
    # every problem found before the run starts is said, one line each: the data file is missing too
    assert err.strip().splitlines()[1:] == [f"rlad-megatron train: data.train_files: data file or folder not found: "
                                            f"{tmp_path}/cfg/train.jsonl (a hub dataset is written hub:ORG/NAME)"]


def test_train_names_a_missing_data_file_before_any_model_loads(tmp_path: Path, model: Path, capsys) -> None:
    """Issue 28: a missing train file was found only after ~13 s of setup, with a traceback."""
    started = time.perf_counter()
    rc = main(["train", f"model.student={model}", "loss.algorithm=grpo", f"data.train_files={tmp_path}/no.jsonl",
               f"trainer.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - started < 10
    assert err.strip() == (f"rlad-megatron train: data.train_files: data file or folder not found: {tmp_path}/no.jsonl "
                           "(a hub dataset is written hub:ORG/NAME)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--tp", "0"], "--tp 0: must be >= 1"),
    (["--pp", "-1"], "--pp -1: must be >= 1"),
    (["--tp", "2"], "--tp 2 x --pp 1 = 2 does not divide the 1 ranks"),
])
def test_convert_refuses_bad_layouts_before_work(tmp_path: Path, model: Path, capsys, args, message) -> None:
    rc = main(["convert", "hf-to-mcore", "--hf", str(model), "--out", str(tmp_path / "o"), *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_convert_never_writes_into_a_non_empty_out(tmp_path: Path, model: Path, capsys) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"precious")
    for argv in (["hf-to-mcore", "--hf", str(model)], ["mcore-to-hf", "--ckpt", str(tmp_path)]):
        assert main(["convert", *argv, "--out", str(out)]) == 2
        assert "is not an empty folder" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"precious"
    assert main(["convert", "mcore-to-hf", "--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "n")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["convert", "hf-to-mcore", "--hf", str(tmp_path / "none"), "--out", str(tmp_path / "n")]) == 2
    assert "--hf=" in capsys.readouterr().err


def _demo_file(path: Path) -> Path:
    from rlad_megatron.tasks.arithmetic.task import generate_records

    path.write_text("".join(json.dumps(r) + "\n" for r in generate_records(4, seed=0, min_digits=1, max_digits=1)))
    return path


def test_eval_unknown_engine_option_leaves_nothing_behind(tmp_path: Path, model: Path, capsys) -> None:
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(model), "--task", "arithmetic", "--data", str(_demo_file(tmp_path / "d.jsonl")),
               "--out", str(out), "--engine-option", "bogus=1"])
    assert rc == 2
    assert "--engine-option bogus: not an engine setting; choose from" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["eval", "--model", str(model), "--task", "arithmetic", "--data", str(tmp_path / "d.jsonl"),
               "--out", str(out), "--engine-option", "max_num_seqs=many"])
    assert rc == 2 and "--engine-option" in capsys.readouterr().err and not out.exists()


def test_eval_empty_jsonl_is_a_clear_error(tmp_path: Path, model: Path, capsys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    rc = main(["eval", "--model", str(model), "--task", "arithmetic", "--data", str(empty), "--out",
               str(tmp_path / "eval")])
    assert rc == 2 and f"data file {empty} is empty: no rows to load" in capsys.readouterr().err


def test_eval_response_budget_respects_the_context_length() -> None:
    assert response_budget(None, 9, 512) == 503  # the README command on the demo's 512-token student
    assert response_budget(None, 9, 4096) == 512 and response_budget(None, 9, None) == 512
    assert response_budget(64, 9, 512) == 64
    with pytest.raises(ValueError, match=r"--max-tokens 600 .* context length 512 .* use --max-tokens 503"):
        response_budget(600, 9, 512)
    with pytest.raises(ValueError, match="no room for a response"):
        response_budget(None, 600, 512)


_FULL_DISK_RUN = """
import sys
from pathlib import Path
import rlad_megatron.trainer.loop as loop
import rlad_megatron.trainer.setup.checks as checks
from rlad_megatron.atomic_write import DiskFullError
from rlad_megatron.cli import main

def full_disk(config, **kwargs):
    out = Path(config.trainer.output_dir) / "checkpoints" / "step_1"
    raise DiskFullError(f"writing the checkpoint {out} failed: the disk is full (0 bytes free)", out, 0)

checks.run_problems = lambda config: []  # the run itself is what this test is about, not its folders
loop.train = full_disk
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_training_is_one_line_and_the_traceback_goes_to_the_log(tmp_path: Path) -> None:
    """The run fills the disk (a checkpoint write raises DiskFullError): the console gets one line naming the path
    and the free bytes, exit 2; the traceback is in the run's train.log."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_RUN, "train", "loss.algorithm=grpo",
                           f"model.student={tmp_path / 's'}", f"data.train_files=[{tmp_path / 'd.jsonl'}]",
                           f"trainer.output_dir={out}"], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == [f"rlad-megatron train: writing the checkpoint {out}/checkpoints/step_1 "
                                              "failed: the disk is full (0 bytes free)"], proc.stderr
    assert "Traceback" in (out / "train.log").read_text() and "DiskFullError" in (out / "train.log").read_text()
