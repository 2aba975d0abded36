"""The output folder of a training command: a fresh run never clobbers an existing one, --overwrite moves it aside,
--resume / trainer.resume=auto compare the saved config and refuse changes that alter the run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlad_megatron import cli
from rlad_megatron.config import load_run_config, run_config_to_dict
from rlad_megatron import checkpoint_files as ckf
from rlad_megatron.trainer.checkpoints.run_dir import RunDirError, prepare_output_dir, record_run_config, run_changes


def _config(out: Path, *extra: str):
    return load_run_config(None, ["model.student=/m/student", "model.teacher=/m/teacher",
                                  "data.train_files=/d/train.jsonl", f"trainer.output_dir={out}", *extra])


def _fake_checkpoint(out: Path, step: int, config) -> Path:
    """A folder that reads as a complete trainer checkpoint to the discovery code (no model files)."""
    folder = out / "checkpoints" / ckf.step_folder_name(step)
    folder.mkdir(parents=True)
    (folder / "trainer_rank0.json").write_text(json.dumps({"step": step, "config": run_config_to_dict(config)}))
    ckf.write_manifest(folder, {"trainer_rank0.json": ckf.file_digest(folder / "trainer_rank0.json")}, step)
    (out / "checkpoints" / "latest").write_text(folder.name)
    return folder


def _old_run(out: Path, config, step: int = 4) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, step + 1)))
    _fake_checkpoint(out, step, config)
    record_run_config(out, config)


def test_fresh_run_in_empty_or_new_folder_starts(tmp_path: Path) -> None:
    assert prepare_output_dir(_config(tmp_path / "new")).resume is False
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("x: 1\n")  # the user's own files are not a run
    assert prepare_output_dir(_config(tmp_path / "mine")).resume is False


def test_fresh_run_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _old_run(out, _config(out))
    with pytest.raises(RunDirError) as err:
        prepare_output_dir(_config(out))
    text = str(err.value)
    assert str(out) in text and "step 4" in text and "--resume" in text and "--overwrite" in text
    assert "another trainer.output_dir" in text
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4  # untouched


def test_overwrite_moves_the_old_run_aside(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _old_run(out, _config(out))
    (out / "config.yaml").write_text("mine\n")
    start = prepare_output_dir(_config(out), overwrite=True)
    assert start.resume is False and start.moved_to is not None
    assert start.moved_to.parent == tmp_path and start.moved_to.name.startswith("run.old-")
    assert len((start.moved_to / "metrics.jsonl").read_text().splitlines()) == 4
    assert ckf.has_checkpoint(start.moved_to / "checkpoints")
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()
    assert (out / "config.yaml").read_text() == "mine\n"  # not a run file: stays
    # Non-zero ranks decide alike but leave the moving to rank 0.
    _old_run(out, _config(out))
    assert prepare_output_dir(_config(out), overwrite=True, rank0=False).moved_to is None
    assert (out / "metrics.jsonl").exists()


def test_overwrite_with_resume_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_output_dir(_config(tmp_path), resume=True, overwrite=True)
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_output_dir(_config(tmp_path, "trainer.resume=auto"), overwrite=True)


def test_resume_auto_starts_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    start = prepare_output_dir(_config(out, "trainer.resume=auto"))
    assert start.resume is False and "no checkpoint" in start.notes[0]
    _old_run(out, _config(out))
    assert prepare_output_dir(_config(out, "trainer.resume=auto")).resume is True


def test_resume_auto_refuses_an_unidentified_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirError, match="neither a checkpoint"):
        prepare_output_dir(_config(out, "trainer.resume=auto"))


@pytest.mark.parametrize("override, key", [
    ("model.student=/m/other", "model.student"),
    ("loss.algorithm=grpo", "loss.algorithm"),
    ("optim.lr=1e-3", "optim.lr"),
    ("data.train_files=/d/other.jsonl", "data.train_files"),
    ("trainer.seed=5", "trainer.seed"),
])
def test_resume_refuses_changes_that_alter_the_run(tmp_path: Path, override: str, key: str) -> None:
    out = tmp_path / "run"
    _old_run(out, _config(out))
    with pytest.raises(RunDirError) as err:
        prepare_output_dir(_config(out, override), resume=True)
    assert key in str(err.value) and "--allow-config-change" in str(err.value)
    start = prepare_output_dir(_config(out, override), resume=True, allow_config_change=True)
    assert start.resume and key in start.notes[0]


def test_resume_accepts_layout_changes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _old_run(out, _config(out))
    changed = _config(out, "parallel.tensor_parallel=2", "trainer.micro_batch_size=2", "trainer.save_every=1",
                      "rollout.placement=disaggregated", "trainer.keep_checkpoints=5", "model.student=/m/student/")
    assert prepare_output_dir(changed, resume=True).resume is True


def test_saved_config_of_an_older_version_compares_against_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path)
    saved = run_config_to_dict(config)
    del saved["rollout"]["tis_cap"]  # a key that did not exist when the run was saved
    assert run_changes(saved, config) == []
    assert run_changes(saved, _config(tmp_path, "rollout.tis_cap=2")) == ["rollout.tis_cap: None -> 2.0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A student and a teacher that pass every check before the run (their weights are never loaded here)."""
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    root = tmp_path_factory.mktemp("models")
    return {role: make_tiny_hf_model(root / role, family="llama", hidden_size=64, num_heads=2, num_kv_heads=2,
                                     seed=i) for i, role in enumerate(("student", "teacher"))}


def test_cli_refuses_before_training(tmp_path: Path, models: dict[str, Path], capsys) -> None:
    out = tmp_path / "run"
    data = tmp_path / "train.jsonl"  # a data file that passes the data check (which comes first)
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    saved = _config(out, f"model.student={models['student']}", f"model.teacher={models['teacher']}",
                    f"data.train_files={data}")
    _old_run(out, saved)
    args = ["train", f"model.student={models['student']}", f"model.teacher={models['teacher']}",
            f"data.train_files={data}", f"trainer.output_dir={out}"]
    assert cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(args + ["--resume", "loss.alpha=0.9"]) == 2
    assert "loss.alpha: 0.5 -> 0.9" in capsys.readouterr().err


def test_a_requeued_slurm_job_continues_its_run_whatever_its_command_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _old_run(out, _config(out))
    for flags in ({}, {"overwrite": True}):  # submitted without --requeue / trainer.resume=auto, or with --overwrite
        start = prepare_output_dir(_config(out), requeued=True, **flags)
        assert start.resume is True and "Slurm requeued this job" in start.notes[0]
        assert (out / "metrics.jsonl").exists()  # nothing moved aside
    fresh = prepare_output_dir(_config(tmp_path / "new"), requeued=True)  # requeued before its first checkpoint
    assert fresh.resume is False


def test_output_dir_under_a_regular_file_is_one_line_naming_the_key(tmp_path: Path, models: dict[str, Path],
                                                                   capsys) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder\n")
    for out, where in ((blocker, "is a file"), (blocker / "run" / "a", f"lies under {blocker}, which is a file")):
        with pytest.raises(RunDirError, match=f"trainer.output_dir={out} {where}, not a folder: choose another "
                                              "trainer.output_dir"):
            prepare_output_dir(_config(out))
    data = tmp_path / "train.jsonl"  # a data file that passes the data check (which comes first)
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    rc = cli.main(["train", *(f"model.{role}={path}" for role, path in models.items()), f"data.train_files={data}",
                   f"trainer.output_dir={blocker / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"rlad-megatron train: trainer.output_dir={blocker / 'run'} lies under {blocker}, "
                               f"which is a file, not a folder: choose another trainer.output_dir (or move the file "
                               f"away)\n")
    assert blocker.read_text() == "not a folder\n"
