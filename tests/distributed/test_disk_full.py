"""A real full disk (a tiny tmpfs, mounted for the test; root only) under `convert hf-to-mcore`, `convert mcore-to-hf`
and a trainer checkpoint save: one line that says the disk is full, where and how much is left (exit code 2 for the
CLI, no traceback), and nothing half-written at the destination nor beside it. Before, `convert` died with
`RuntimeError: Worker failure: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598` (or
`[Errno 28]`) in a traceback and left a half-written folder at --out."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _convert(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlad_megatron.cli", "convert", *argv], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def _one_line_error(proc: subprocess.CompletedProcess, command: str, what: str, disk: Path) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"rlad-megatron convert {command}: ")]
    assert f": the disk is full: writing {what} {disk}/" in line and f"free on the filesystem mounted at {disk} " \
        in line, line
    assert " bytes (" in line and ("choose another --out" in line or "export elsewhere" in line), line
    return line


def test_convert_onto_a_full_disk_says_so_and_leaves_nothing(tmp_path: Path, tiny_disk) -> None:
    disk = tiny_disk("200k")  # the tiny model is 380 KB
    hf = make_tiny_hf_model(tmp_path / "hf", family="llama", hidden_size=64, intermediate_size=128, num_heads=2,
                            num_kv_heads=2, seed=0)
    proc = _convert("hf-to-mcore", "--hf", str(hf), "--out", str(disk / "mcore"))
    _one_line_error(proc, "hf-to-mcore", "the Megatron checkpoint", disk)
    assert list(disk.iterdir()) == []  # neither --out nor its partial folder

    assert _convert("hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "mcore")).returncode == 0
    (disk / "hf").mkdir()  # an empty --out is allowed; it stays as it was
    proc = _convert("mcore-to-hf", "--ckpt", str(tmp_path / "mcore"), "--out", str(disk / "hf"))
    _one_line_error(proc, "mcore-to-hf", "the Hugging Face export", disk)
    assert [p.name for p in disk.iterdir()] == ["hf"] and list((disk / "hf").iterdir()) == []


def _save_on_full_disk(hf: str, root: str) -> str:
    """One rank: a trainer checkpoint onto a disk too small for it; the DiskFullError's message."""
    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.policy import build_student
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.trainer.checkpoints.state import save_trainer_checkpoint

    modules, arch = load_hf_model(hf, trainable=True)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-2))
    try:
        save_trainer_checkpoint(Path(root), 3, wrapped, optimizer, {"data": {"pos": 3}}, keep=2, arch=arch,
                                tokenizer_dir=hf)
    except DiskFullError as err:
        return str(err)
    return "saved"


def test_trainer_checkpoint_onto_a_full_disk_says_so_and_leaves_nothing(tmp_path: Path, tiny_disk) -> None:
    disk = tiny_disk("200k")
    hf = make_tiny_hf_model(tmp_path / "hf", "qwen3", num_layers=2, seed=3)
    root = disk / "run" / "checkpoints"
    message = run_distributed(_save_on_full_disk, 1, args=(str(hf), str(root)), timeout=300)[0]
    assert message.startswith(f"the disk is full: writing the checkpoint of step 3 {root}/.tmp_step_000003 failed ("), \
        message
    assert f"mounted at {disk} after the failed write); the complete checkpoints under {root} are intact: free some " \
           "space, then continue with --resume" in message
    assert list(root.iterdir()) == []  # the attempt's temporary folder is gone, no `latest`
