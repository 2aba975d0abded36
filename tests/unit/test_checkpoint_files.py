"""Checkpoint discovery and manifests without torch: which folders count as complete, the order resume tries them
in, and the messages that name a damaged file."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlad_megatron import checkpoint_files as ckf


def _checkpoint(root: Path, name: str, files: dict[str, bytes], manifest: bool = True) -> Path:
    folder = root / name
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    if manifest:
        ckf.write_manifest(folder, {n: ckf.file_digest(folder / n) for n in ckf.checkpoint_files(folder)},
                           ckf.folder_step(folder) or 0)
    return folder


def test_discovery_order_and_completeness(tmp_path: Path) -> None:
    files = {"megatron/a.distcp": b"abc", "trainer_rank0.json": b"{}"}
    _checkpoint(tmp_path, "step_000001", files)
    _checkpoint(tmp_path, "step_000003", files)
    _checkpoint(tmp_path, "step_000003.old-12", files)
    _checkpoint(tmp_path, "step_000004", files, manifest=False)  # interrupted: no manifest, no metadata.json
    _checkpoint(tmp_path, ".tmp_step_000005", files)
    _checkpoint(tmp_path, "step_000000", {"megatron/metadata.json": b"{}"}, manifest=False)  # before manifests
    assert [p.name for p in ckf.complete_checkpoints(tmp_path)] == [
        "step_000003", "step_000003.old-12", "step_000001", "step_000000"]
    (tmp_path / "latest").write_text("step_000001")
    assert [p.name for p in ckf.candidates(tmp_path)][:2] == ["step_000001", "step_000003"]
    (tmp_path / "latest").write_text("step_000004")  # names an incomplete folder: not tried first
    assert ckf.candidates(tmp_path)[0].name == "step_000003"
    assert ckf.candidates(tmp_path / "missing") == [] and not ckf.has_checkpoint(tmp_path / "missing")


def test_verify_names_the_bad_file(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, "step_000002", {"megatron/a.distcp": b"x" * 5000, "trainer_rank0.json": b"{}"})
    ckf.verify_checkpoint(folder)
    shard = folder / "megatron" / "a.distcp"
    shard.write_bytes(b"y" * 5000)
    with pytest.raises(ckf.CheckpointCorrupt, match=r"a\.distcp does not match its SHA-256"):
        ckf.verify_checkpoint(folder)
    shard.write_bytes(b"x" * 10)
    with pytest.raises(ckf.CheckpointCorrupt, match=r"a\.distcp has 10 bytes, the manifest says 5000"):
        ckf.verify_checkpoint(folder)
    shard.unlink()
    with pytest.raises(ckf.CheckpointCorrupt, match=r"a\.distcp is missing"):
        ckf.verify_checkpoint(folder)
    (folder / ckf.MANIFEST).write_text("{not json")
    with pytest.raises(ckf.CheckpointCorrupt, match="unreadable manifest"):
        ckf.verify_checkpoint(folder)


def test_prune_keeps_the_newest_complete_and_removes_leftovers(tmp_path: Path) -> None:
    from rlad_megatron.trainer.checkpoints.state import _prune

    files = {"megatron/a.distcp": b"abc"}
    for name in ("step_000001", "step_000002", "step_000003", "step_000003.old-9", ".tmp_step_000004"):
        _checkpoint(tmp_path, name, files)
    _checkpoint(tmp_path, "step_000005", files, manifest=False)  # an interrupted save of the old format
    (tmp_path / "latest").write_text("step_000003")
    _prune(tmp_path, 2, current=tmp_path / "step_000003")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000002", "step_000003"]
