"""Writing run artifacts (rlad_megatron/atomic_write.py): a destination holds the old content or the new one, never
half of it; a failed write leaves no temporary behind; a full disk is reported as such, with the path and the bytes
free, also when a library hides the error (torch's zip writer: "unexpected pos"). First with an injected ENOSPC,
then on a real full disk (a tiny tmpfs; root only) for the metrics, TensorBoard and the curves."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from rlad_megatron import atomic_write as aw
from rlad_megatron.atomic_write import DiskFullError


class _FullDisk:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, inner, room: int) -> None:
        self.inner, self.room = inner, room

    def write(self, data):
        if len(data) > self.room:
            self.inner.write(data[: self.room])
            self.inner.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.inner.write(data)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith((".tmp", ".partial")))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "run_config.json"
    aw.write_json(path, {"old": True})
    with pytest.raises(DiskFullError) as err:
        with aw.atomic_file(path, "w", what="the run config", advice="free some space") as f:
            _FullDisk(f, 10).write('{"new": "a value longer than ten bytes"}')
    text = str(err.value)
    assert text.startswith(f"the disk is full: writing the run config {path} failed (")
    assert " bytes (" in text and "free on the filesystem mounted at /" in text and text.endswith("; free some space")
    assert err.value.path == path and isinstance(err.value.free, int)
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"old": True} and _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="not JSON"):  # any other failure: the same cleanup, the error as it was
        with aw.atomic_file(path) as f:
            f.write("{")
            raise ValueError("not JSON")
    assert json.loads(path.read_text()) == {"old": True} and _leftovers(tmp_path) == []
    aw.copy_file(path, tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_text() == path.read_text()


def test_a_hidden_full_disk_is_recognised_by_the_space_left(tmp_path: Path, monkeypatch) -> None:
    torch_zip = RuntimeError("Worker failure: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert aw.is_disk_full(RuntimeError("Worker failure: [Errno 28] No space left on device"))
    assert aw.is_disk_full(RuntimeError("wrapped")) is False
    wrapped = RuntimeError("checkpoint failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")  # a quota: the same message
    assert aw.is_disk_full(wrapped)
    monkeypatch.setattr(aw, "free_bytes", lambda path: 4096)
    assert aw.is_disk_full(torch_zip, tmp_path)
    with pytest.raises(DiskFullError, match=r"4096 bytes \(4\.0 KiB\) free"):
        with aw.disk_full_guard(tmp_path, "the checkpoint"):
            raise torch_zip
    monkeypatch.setattr(aw, "free_bytes", lambda path: 50 << 30)  # plenty left: a different failure, passed on
    assert not aw.is_disk_full(torch_zip, tmp_path)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with aw.disk_full_guard(tmp_path, "the checkpoint"):
            raise torch_zip


def test_a_folder_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "hf"
    with aw.atomic_dir(final) as partial:
        assert partial == tmp_path / ".hf.partial" and not final.exists()
        (partial / "model.safetensors").write_bytes(b"v1")
    assert (final / "model.safetensors").read_bytes() == b"v1" and _leftovers(tmp_path) == []
    with pytest.raises(DiskFullError, match=r"writing the export .*/\.hf\.partial failed"):
        with aw.atomic_dir(final, replace=True, what="the export") as partial:
            (partial / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (final / "model.safetensors").read_bytes() == b"v1" and _leftovers(tmp_path) == []  # the old one whole
    with aw.atomic_dir(final, replace=True) as partial:
        (partial / "model.safetensors").write_bytes(b"v2")
    assert (final / "model.safetensors").read_bytes() == b"v2" and _leftovers(tmp_path) == []
    empty = tmp_path / "out"
    empty.mkdir()  # `convert --out` may name an empty folder
    partial = aw.start_dir(empty)
    (partial / "x").write_text("x")
    aw.finish_dir(partial, empty)
    assert (empty / "x").read_text() == "x" and _leftovers(tmp_path) == []


def test_a_real_full_disk_for_single_files(tiny_disk) -> None:
    disk = tiny_disk("64k")
    (disk / "keep.txt").write_text("kept")
    with pytest.raises(DiskFullError) as err:
        aw.write_text(disk / "keep.txt", "x" * 200_000, what="a file")
    assert f"writing a file {disk / 'keep.txt'} failed (" in str(err.value) and f"mounted at {disk} after the failed write)" in str(err.value)
    assert err.value.free is not None and err.value.free < 8192
    assert (disk / "keep.txt").read_text() == "kept" and sorted(p.name for p in disk.iterdir()) == ["keep.txt"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer thread
def test_metrics_tensorboard_and_curves_on_a_real_full_disk(tiny_disk) -> None:
    from rlad_megatron.trainer.observability.logger import MetricsLogger
    from rlad_megatron.trainer.observability.plots import plot_curves

    disk = tiny_disk("128k")
    logger = MetricsLogger(disk / "run", total_steps=100_000)
    with pytest.raises(DiskFullError) as err:
        for step in range(1, 100_000):
            logger.log(step, {f"reward/k{i}": float(step) for i in range(40)})
    assert str(err.value).startswith(f"the disk is full: writing the metrics (metrics.jsonl, tb/, curves.png) under "
                                     f"{disk / 'run'} failed (")
    assert "continue with --resume" in str(err.value)
    with pytest.raises(DiskFullError):
        logger.close()
    # The image is drawn aside and renamed: on a full disk there is none, and no temporary either.
    with pytest.raises(DiskFullError, match="writing the curves image"):
        plot_curves(disk / "run" / "metrics.jsonl", disk / "run" / "curves.png")
    assert not (disk / "run" / "curves.png").exists() and not (disk / "run" / "curves.png.tmp").exists()
