"""Run configuration errors name the bad key; repeated non-finite steps stop the run; mini-batch/sequence packing."""
from __future__ import annotations

import os

import pytest
import torch

from rlad_megatron.config import ConfigError, load_run_config
from rlad_megatron.learner.sequences import pack_sequences
from rlad_megatron.trainer.step.guards import NonFiniteStepGuard, TrainingStopped
from rlad_megatron.trainer.loop import lr_at

BASE = ["model.student=/s", "model.teacher=/t", "data.train_files=a.jsonl"]


def test_overrides_and_yaml(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("loss: {algorithm: grpo, alpha: 0.3}\ntrainer: {steps: 7, output_dir: out}\n")
    config = load_run_config(path, BASE + ["trainer.steps=9", "rollout.tis_cap=2", "data.train_files=a,b"])
    assert config.loss.algorithm == "grpo" and config.loss.alpha == 0.3
    assert config.trainer.steps == 9 and config.rollout.tis_cap == 2.0
    # Relative paths: the config file's from its folder, the command line's from the working directory.
    assert config.data.train_files == [os.path.abspath("a"), os.path.abspath("b")]
    assert config.trainer.output_dir == str(tmp_path / "out")


@pytest.mark.parametrize("override, message", [
    ("loss.alfa=0.5", "unknown config key loss.alfa"),
    ("trainr.steps=3", "unknown config key trainr"),
    ("trainer.steps=many", "trainer.steps: expected an integer"),
    ("loss.algorithm=ppo", "loss.algorithm='ppo'"),
    ("loss.alpha=1.5", "alpha"),
    ("rollout.placement=cloud", "rollout.placement='cloud'"),
    ("parallel.sequence_parallel=true", "sequence_parallel"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size must be >= 1"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("optim.min_lr=1", "optim.min_lr"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_run_config(None, BASE + [override])


def test_teacher_required_for_distillation() -> None:
    with pytest.raises(ConfigError, match="needs model.teacher"):
        load_run_config(None, ["model.student=/s", "data.train_files=a", "loss.algorithm=kdrl"])
    assert load_run_config(None, ["model.student=/s", "data.train_files=a", "loss.algorithm=grpo"])


def test_fp8_without_gpu_is_refused_at_job_start(capsys) -> None:
    """Validation probes no hardware (the config loads on any machine); `train` refuses it before building."""
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    from rlad_megatron.cli import main

    overrides = BASE + ["fp8.enabled=true", "model.params_dtype=bfloat16"]
    assert load_run_config(None, overrides).fp8.enabled
    assert main(["train", *overrides]) == 2
    assert "fp8 is enabled but cannot run here: no CUDA GPU" in capsys.readouterr().err


def test_non_finite_guard_stops_after_consecutive_failures() -> None:
    guard = NonFiniteStepGuard(3)
    guard.record(1, 1)
    guard.record(2, 2)
    guard.record(3, 0)  # a good step resets the count
    guard.record(4, 1)
    guard.record(5, 1)
    with pytest.raises(TrainingStopped, match="3 consecutive steps"):
        guard.record(6, 1)


def test_lr_schedule_warmup_and_cosine() -> None:
    config = load_run_config(None, BASE + ["optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=2",
                                           "trainer.steps=12"])
    assert lr_at(0, config) == pytest.approx(5e-4) and lr_at(1, config) == pytest.approx(1e-3)
    assert lr_at(2, config) == pytest.approx(1e-3)
    assert lr_at(12, config) == pytest.approx(1e-4)
    assert lr_at(7, config) == pytest.approx(1e-4 + 0.5 * 9e-4)


def test_pack_sequences_masks_response_targets_only() -> None:
    tokens, mask, engine = pack_sequences([[1, 5, 6], [1, 7]], [[8, 2], [9, 9, 2]], [[-0.1, -0.2], [-1, -2, -3]],
                                          pad_id=0, pad_to_multiple=4)
    assert tokens.tolist() == [[1, 5, 6, 8, 2, 0, 0, 0], [1, 7, 9, 9, 2, 0, 0, 0]]
    # position t predicts tokens[t + 1]
    assert mask.tolist() == [[False, False, True, True, False, False, False],
                             [False, True, True, True, False, False, False]]
    assert engine[0, 2:4].tolist() == pytest.approx([-0.1, -0.2]) and engine[1, 1:4].tolist() == [-1, -2, -3]


def test_pack_sequences_pads_only_as_the_device_needs() -> None:
    from rlad_megatron.learner.sequences import default_pad_multiple

    tokens, mask, _ = pack_sequences([[1, 5, 6]], [[8, 2]], [[-0.1, -0.2]], pad_id=0)
    expected = -(-5 // default_pad_multiple()) * default_pad_multiple()
    assert tokens.shape == (1, expected) and mask.shape == (1, expected - 1)
    if not torch.cuda.is_available():
        assert tokens.tolist() == [[1, 5, 6, 8, 2]]  # CPU: no padded column to compute
