"""Every config value is checked at load (finite, in range, one of the choices, a registered task), overrides are
converted by the field's declared type, and a broken config file gets an error naming file, line and column."""
from __future__ import annotations

import os

import re
from pathlib import Path

import pytest

from rlad_megatron.config import ConfigError, load_run_config

BASE = ["model.student=/s", "model.teacher=/t", "data.train_files=a.jsonl"]


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "optim.lr: expected a finite number"),
    ("rollout.temperature=inf", "rollout.temperature: expected a finite number"),
    ("rollout.tis_cap=nan", "rollout.tis_cap: expected a finite number"),
    ("loss.alpha=-inf", "loss.alpha: expected a finite number"),
    ("trainer.save_every=-1", "trainer.save_every must be >= 0"),
    ("trainer.eval_every=-2", "trainer.eval_every must be >= 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0"),
    ("optim.clip_grad=-1", "optim.clip_grad must be >= 0"),
    ("optim.adam_beta1=5", "optim.adam_beta1 must be in [0, 1)"),
    ("optim.adam_beta2=1", "optim.adam_beta2 must be in [0, 1)"),
    ("optim.adam_eps=0", "optim.adam_eps must be in (0, 1]"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("rollout.weight_load=bogus", "rollout.weight_load='bogus': choose one of 'inplace', 'vllm_reload'"),
    ("rollout.dtype=float8", "rollout.dtype='float8'"),
    ("rollout.kv_cache_mb=0", "rollout.kv_cache_mb must be >= 1"),
    ("rollout.verify_every=-1", "rollout.verify_every must be >= 0"),
    ("rollout.max_logprob_mismatch=-1", "rollout.max_logprob_mismatch must be >= 0"),
    ("data.max_prompt_tokens=0", "data.max_prompt_tokens must be >= 1"),
    ("data.task=arithmatic", "data.task='arithmatic' is not a registered task; choose one of"),
    ("trainer.seed=-1", "trainer.seed must be in [0, 4294967295]"),
    ("trainer.eval_top_p=0", "trainer.eval_top_p must be in (0, 1]"),
    ("trainer.eval_temperature=-1", "trainer.eval_temperature must be >= 0"),
    ("trainer.resume=sometimes", "trainer.resume='sometimes'"),
    ("trainer.output_dir=", "trainer.output_dir: give the folder"),
    ("trainer.steps=1.5", "trainer.steps: expected an integer"),
    ("=3", "expected the form section.key=value"),
])
def test_bad_values_are_refused_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_run_config(None, BASE + [override])


def test_overrides_follow_the_declared_type() -> None:
    config = load_run_config(None, BASE + [
        "trainer.output_dir=0755", "model.student=0x10", "model.teacher=1e3", "trainer.steps=12",
        "rollout.tis_cap=2", "loss.dual_clip_c=null", "data.eval_files=[x.jsonl, y.jsonl]",
        "trainer.export_hf=no", "optim.lr=2e-4", "model.params_dtype=bfloat16",
    ])
    here = os.getcwd()  # paths given on the command line are taken from the working directory
    assert config.trainer.output_dir == f"{here}/0755" and config.model.student == f"{here}/0x10"
    assert config.model.teacher == f"{here}/1e3" and config.trainer.steps == 12
    assert config.rollout.tis_cap == 2.0 and config.loss.dual_clip_c is None
    assert config.data.eval_files == [f"{here}/x.jsonl", f"{here}/y.jsonl"] and config.trainer.export_hf is False
    assert config.optim.lr == 2e-4 and config.model.params_dtype == "bfloat16"
    assert load_run_config(None, BASE + ["rollout.tis_cap=none"]).rollout.tis_cap is None


def test_yaml_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  student: /s\ntrainer: {steps: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:4:1: invalid YAML"):
        load_run_config(path, BASE)
    path.write_text("model:\n  student: /s\n   teacher: /t\n")
    with pytest.raises(ConfigError, match=rf"{path}:3:\d+: invalid YAML"):
        load_run_config(path, BASE)


def test_config_path_that_is_a_folder_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder"):
        load_run_config(tmp_path, BASE)
    binary = tmp_path / "run.yaml"
    binary.write_bytes(b"model:\n  student: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 18\)"):
        load_run_config(binary, BASE)
