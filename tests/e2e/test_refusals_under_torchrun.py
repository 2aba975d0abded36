"""Under torchrun a refused input is said once (issue 27): every rank runs the checks before anything heavy, global
rank 0 says what is wrong, the others wait quietly for torchrun to stop them, and ``rlad_megatron.launch_local``
ends with exit code 2 and nothing more -- no traceback, no torchrun failure report, no line per rank. Plain
``torchrun`` adds its own report, after the one message.

The refused input here is a student vLLM's CPU attention cannot serve (head_dim 16): before the checks it loaded,
the engine started, and its first forward pass failed with vLLM's ``RuntimeError: Unsupported CPU attention
configuration: head_dim=16 isa=2 kv_cache_idx=0``, in a traceback per rank interleaved with torchrun's report.
Cheap: nothing loads; each launch takes the time torchrun and two ranks take to start (~10-20 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlad_megatron.launch_local import command
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory) -> tuple[list[str], str, Path]:
    """The train arguments of a run whose student has head_dim 16, the message it gets, its output folder."""
    root = tmp_path_factory.mktemp("refusal")
    student = make_tiny_hf_model(root / "head16", family="qwen3", hidden_size=64, intermediate_size=64, num_heads=4,
                                 num_kv_heads=2, head_dim=16)
    data = root / "train.jsonl"
    data.write_text('{"prompt": "1+2=", "answer": "3"}\n' * 16)  # enough for a step: the engine is reached
    out = root / "out"
    args = ["train", f"model.student={student}", "loss.algorithm=grpo", "data.task=arithmetic",
            f"data.train_files={data}", f"trainer.output_dir={out}"]
    message = f"rlad-megatron train: model.student={student} has attention head_dim=16 ("
    return args, message, out


def _run(cmd: list[str]) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun's own default, as a user has
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def test_launch_local_says_a_refusal_once_and_nothing_else(bad_run) -> None:
    args, message, out = bad_run
    rc, output, seconds = _run(command(2, "rlad_megatron.cli", args))
    lines = output.strip().splitlines()
    assert rc == 2, output
    assert len(lines) == 1 and lines[0].startswith(message), output  # no traceback, no report, no banner
    assert "vLLM's CPU attention cannot serve" in lines[0] and "num_attention_heads 2 with head_dim 32" in lines[0]
    assert not out.exists() and seconds < 120


def test_plain_torchrun_shows_the_message_once_before_its_report(bad_run) -> None:
    args, message, out = bad_run
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "rlad_megatron.cli", *args]
    rc, output, _ = _run(cmd)
    assert rc != 0 and output.count(message) == 1, output
    assert "ChildFailedError" in output  # torchrun's own report follows: only its caller can leave it out
    assert not out.exists()
