"""tools/gpu_check: which carried wheels the GPU machine installs (only distributions it lacks), and the Markdown
report of a run, also when a part failed or never finished."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "gpu_check"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_missing_distributions_are_installed(tmp_path):
    iw = _module("install_wheels")
    names = ["megatron_core-0.16.1-cp312-cp312-manylinux_2_28_x86_64.whl", "PyYAML-6.0.4-cp312-cp312-any.whl",
             "typing_extensions-4.16.0-py3-none-any.whl", "hf_xet-1.8.0-cp37-abi3-manylinux_2_17_x86_64.whl"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [iw.distribution(tmp_path / n) for n in names] == ["megatron-core", "pyyaml", "typing-extensions",
                                                              "hf-xet"]
    machine = {"pyyaml", "typing-extensions"}  # what the GPU machine already has
    todo = iw.missing_wheels(tmp_path, lambda name: name in machine)
    assert [w.name for w in todo] == sorted([names[0], names[3]])
    assert iw.installed("pytest") and not iw.installed("no-such-distribution-here")


def test_report_renders_partial_results(tmp_path):
    report = _module("report")
    (tmp_path / "parts.txt").write_text("gpu_tests: ok (40 s since start)\nbench: failed (rc=124, timed out after "
                                        "220 s)\nbench_offload: skipped: no CUDA here\n")
    (tmp_path / "env.txt").write_text("torch 2.11.0 cuda 13.0 device NVIDIA H200\nvllm: absent\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_rlad.json").write_text(json.dumps({
        "device": "NVIDIA H200", "dtype": "bfloat16", "student_params_m": 287.1, "sequences_per_step": 128,
        "tokens_per_step": 49152, "parts": {"steps": "ok", "hf_baseline": "running (killed by a timeout if it "
                                                                         "stays so)"},
        "learner_train_tokens_per_s": 61000.0, "train_s_median": 0.81, "learner_tflops_per_s": 120.5,
        "learner_mfu": 0.1218, "teacher_score_tokens_per_s": 150000.0, "teacher_mfu": 0.2, "peak_gpu_gib": 31.2,
        "peak_bf16_tflops": 989.0, "te_less_fixes": ["distopt_checkpoint"]}))
    text = report.render(tmp_path)
    assert "part bench: failed (rc=124, timed out after 220 s)" in text
    assert "learner step 61000 tokens/s" in text and "MFU 12.2%" in text and "peak GPU memory 31.2 GiB" in text
    assert "hf_baseline running" in text and "TE-less fixes applied: distopt_checkpoint" in text
    assert "--teacher-offload: no result" in text
