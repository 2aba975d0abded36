"""Quickstart pieces that need no model: SFT collation, settings hashes, the trainer config, table and results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.quickstart.evaluation import format_table, write_results
from examples.quickstart.prepare import DataFiles, prepare_data, read_records
from examples.quickstart.settings import DataSettings, ModelSettings, QuickstartSettings, settings_hash
from rlad_megatron.tiny.sft import collate_sft
from examples.quickstart.train import training_command, write_train_config


def test_collate_sft_masks_prompt_and_padding() -> None:
    ids, mask, labels = collate_sft([([1, 5, 6], [7, 2]), ([1, 9], [8, 8, 8, 2])], pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 7, 2, 0], [1, 9, 8, 8, 8, 2]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert labels.tolist() == [[-100, -100, -100, 7, 2, -100], [-100, -100, 8, 8, 8, 2]]
    assert ids.dtype == labels.dtype == torch.long
    with pytest.raises(ValueError, match="at least one"):
        collate_sft([], pad_id=0)


def test_settings_hash_tracks_every_field() -> None:
    a = settings_hash("teacher", ModelSettings(), DataSettings())
    assert a == settings_hash("teacher", ModelSettings(), DataSettings())
    assert a != settings_hash("teacher", ModelSettings(sft_steps=601), DataSettings())
    assert a != settings_hash("teacher", ModelSettings(), DataSettings(max_digits=4))
    assert a != settings_hash("student", ModelSettings(), DataSettings())
    assert len(a) == 12


def test_prepare_data_writes_disjoint_splits_once(tmp_path: Path) -> None:
    data = DataSettings(n_train=40, n_test=10, max_digits=2)
    files = prepare_data(data, tmp_path)
    train, test = read_records(files.train), read_records(files.test)
    assert len(train) == 40 and len(test) == 10
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert {r["difficulty"] for r in train} <= {"d1", "d2"}
    mtime = files.train.stat().st_mtime_ns
    assert prepare_data(data, tmp_path).train.stat().st_mtime_ns == mtime  # same settings: not rewritten
    prepare_data(DataSettings(n_train=30, n_test=10, max_digits=2), tmp_path)
    assert len(read_records(files.train)) == 30  # changed settings: rewritten


def test_train_config_is_a_valid_run_config(tmp_path: Path) -> None:
    from rlad_megatron.config import load_run_config

    settings = QuickstartSettings()
    files = DataFiles(train=tmp_path / "train.jsonl", test=tmp_path / "test.jsonl")
    path = write_train_config(settings, tmp_path / "teacher", tmp_path / "student", files, tmp_path / "run")
    config = load_run_config(path)
    assert config.parallel.tensor_parallel == 2 and config.loss.algorithm == "rlad"
    assert config.model.teacher == str(tmp_path / "teacher")
    assert config.rollout.max_new_tokens == settings.max_new_tokens
    assert config.trainer.output_dir == str(tmp_path / "run") and config.trainer.export_hf
    # The rollout batch splits into micro-batches on each data-parallel rank.
    dp = settings.rl.nproc // settings.rl.tensor_parallel
    assert (settings.rl.prompts_per_step * settings.rl.group_size // dp) % settings.rl.micro_batch_size == 0

    settings.rl.alpha = 1.5
    with pytest.raises(ValueError, match="alpha"):
        write_train_config(settings, tmp_path / "t", tmp_path / "s", files, tmp_path / "bad")
    cmd = training_command(path, 2, ["trainer.steps=3"], resume=True)
    assert cmd[-4:] == ["--config", str(path), "--resume", "trainer.steps=3"]
    assert "--nproc-per-node=2" in cmd


def test_max_new_tokens_covers_the_reference_completion() -> None:
    from rlad_megatron.tasks.arithmetic.task import reference_cot

    for digits in (1, 3, 5):
        settings = QuickstartSettings(data=DataSettings(max_digits=digits))
        worst = reference_cot(10 ** digits - 1, 10 ** digits - 1)
        assert len(worst) + 1 <= settings.max_new_tokens  # + eos


def test_table_and_results(tmp_path: Path) -> None:
    teacher = {"accuracy": 0.9, "by_difficulty": {"d1": 1.0, "d10": 0.5, "d2": 0.8}}
    before = {"accuracy": 0.3, "by_difficulty": {"d1": 0.6, "d2": 0.1}}
    after = {"accuracy": 0.45, "by_difficulty": {"d1": 0.7, "d2": 0.3, "d10": 0.0}}
    table = format_table({"teacher": teacher, "student (before)": before, "student (after)": after}, k=1)
    lines = table.splitlines()
    assert lines[0].split() == ["model", "Mean@1", "d1", "d2", "d10"]
    assert lines[2].split()[-4:] == ["0.900", "1.000", "0.800", "0.500"]
    assert lines[3].split()[-1] == "nan"  # a difficulty the student's test rows lacked
    path = write_results(tmp_path / "r" / "results.json", teacher=teacher, before=before, after=after, steps=30,
                         seconds=512.34, extra={"algorithm": "rlad"})
    results = json.loads(path.read_text())
    assert results["teacher_accuracy"] == 0.9 and results["student_accuracy_before"] == 0.3
    assert results["student_accuracy_after"] == 0.45 and results["steps"] == 30 and results["seconds"] == 512.3
    assert results["algorithm"] == "rlad"
