"""The quickstart's pipeline pieces with tiny step counts: data, teacher and student preparation (real
``transformers`` models trained in plain torch), the settings-hash cache (hit on the second call), the vLLM
evaluation of a prepared model, and the training launcher's error report. The full quickstart is not a test."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from examples.quickstart.prepare import MARKER, model_cache_dir, prepare_data, prepare_model
from examples.quickstart.settings import DataSettings, EvalSettings, ModelSettings, QuickstartSettings

pytestmark = pytest.mark.e2e


def _tiny_settings() -> QuickstartSettings:
    return QuickstartSettings(
        data=DataSettings(n_train=64, n_test=8, max_digits=2),
        # head_dim 32: vLLM's CPU attention needs a multiple of 32 (16 fails at generate in fp32).
        teacher=ModelSettings(num_layers=1, hidden_size=64, intermediate_size=64, num_heads=2, sft_steps=4,
                              sft_batch_size=8),
        student=ModelSettings(num_layers=1, hidden_size=32, intermediate_size=32, num_heads=1, num_kv_heads=1,
                              init_seed=1, sft_steps=2, sft_batch_size=8),
        eval=EvalSettings(k=2, limit=4),
        torch_threads=1,
        prep_eval_prompts=4,
    )


def test_prepare_teacher_and_student_with_cache(tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    settings = _tiny_settings()
    files = prepare_data(settings.data, tmp_path / "data")
    logs: list[str] = []
    teacher = prepare_model("teacher", settings.teacher, settings, files, tmp_path / "cache", logs.append)
    assert not teacher.cached and teacher.path == model_cache_dir("teacher", settings.teacher, settings,
                                                                  tmp_path / "cache")
    assert teacher.path.name.startswith("teacher-") and (teacher.path / MARKER).exists()
    info = json.loads((teacher.path / MARKER).read_text())
    assert 0.0 <= info["accuracy"]["accuracy"] <= 1.0 and info["accuracy"]["n"] == 4
    assert info["sft"]["steps"] == 4 and info["sft"]["last_loss"] < info["sft"]["first_loss"] + 1.0
    assert any("greedy accuracy" in line for line in logs)
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # the temporary build directory is gone

    # The saved weights are the trained ones, not the random initialisation.
    init = make_tiny_hf_model(tmp_path / "init", num_layers=1, hidden_size=64, intermediate_size=64, seed=0)
    trained, random_init = load_file(teacher.path / "model.safetensors"), load_file(init / "model.safetensors")
    assert trained.keys() == random_init.keys()
    assert any(not torch.equal(trained[k], random_init[k]) for k in trained)
    model = AutoModelForCausalLM.from_pretrained(teacher.path)
    assert model.config.num_hidden_layers == 1 and model.config.hidden_size == 64

    logs.clear()
    again = prepare_model("teacher", settings.teacher, settings, files, tmp_path / "cache", logs.append)
    assert again.cached and again.path == teacher.path and again.info == info
    assert logs and "cached" in logs[0]

    student = prepare_model("student", settings.student, settings, files, tmp_path / "cache", logs.append)
    assert not student.cached and student.path != teacher.path
    assert AutoModelForCausalLM.from_pretrained(student.path).config.hidden_size == 32

    settings.teacher.sft_steps = 5  # a changed setting is a different cache entry
    assert model_cache_dir("teacher", settings.teacher, settings, tmp_path / "cache") != teacher.path


@pytest.mark.slow
def test_evaluate_prepared_model_with_vllm(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from examples.quickstart.evaluation import evaluate_model

    settings = _tiny_settings()
    files = prepare_data(settings.data, tmp_path / "data")
    student = prepare_model("student", settings.student, settings, files, tmp_path / "cache", lambda _: None)
    first = evaluate_model(student.path, files.test, settings, student.path / "eval", cache=True)
    assert first["prompts"] == 4 and 0.0 <= first["accuracy"] <= 1.0
    assert set(first["by_difficulty"]) <= {"d1", "d2"}
    assert (student.path / "eval" / "eval.json").exists()
    second = evaluate_model(student.path, files.test, settings, student.path / "eval", cache=True)
    assert second.pop("cached") is True and second == first


@pytest.mark.slow
def test_training_failure_reports_exit_code_and_tail(tmp_path: Path) -> None:
    from examples.quickstart.train import TrainingFailed, run_training

    missing = tmp_path / "no_such_config.yaml"
    stream = io.StringIO()
    with pytest.raises(TrainingFailed, match="exited with code") as err:
        run_training(missing, 1, log_file=tmp_path / "train.log", stream=stream, timeout_s=300)
    assert "does not exist" in str(err.value)  # the trainer's own message, from the log's tail
    assert "does not exist" in stream.getvalue() and "does not exist" in (tmp_path / "train.log").read_text()
