"""Finding and checking trainer checkpoints on disk, without torch (the CLI asks before any process group starts).

    checkpoints/step_000012/                 one complete checkpoint (renamed into place only once complete)
    checkpoints/step_000012/manifest.json    every file of the checkpoint with its size and SHA-256
    checkpoints/latest                       "step_000012", switched after the folder is complete
    checkpoints/.tmp_step_000014/            a save in progress (or interrupted): never loaded, removed later
    checkpoints/step_000012.old-<pid>/       a complete checkpoint of the same step set aside while it is re-saved

A checkpoint is *complete* when its folder carries a manifest (written last, before the rename). Folders written
before manifests existed count as complete when Megatron's ``metadata.json`` is there; they are not checksummed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from rlad_megatron.atomic_write import write_text

MANIFEST = "manifest.json"
LATEST = "latest"
TMP_PREFIX = ".tmp_step_"
_STEP_RE = re.compile(r"^step_(\d+)(\.old-\d+)?$")


def step_folder_name(step: int) -> str:
    return f"step_{step:06d}"


def folder_step(folder: Path) -> int | None:
    """The step of a checkpoint folder name (``step_000012`` or its set-aside copy ``step_000012.old-77``)."""
    match = _STEP_RE.match(folder.name)
    return int(match.group(1)) if match else None


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (
        not (folder / MANIFEST).exists() and (folder / "megatron" / "metadata.json").is_file()
    )


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, newest step first (the exact ``step_N`` name before copies)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and folder_step(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: (folder_step(p), p.name == step_folder_name(folder_step(p))), reverse=True)


def latest_named(root: Path) -> Path | None:
    """The folder ``root/latest`` names (it may be missing or incomplete), or None without a pointer."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    return Path(root) / name if name else None


def candidates(root: Path) -> list[Path]:
    """Checkpoints to try on resume, in order: the one ``latest`` names (when complete), then every other complete
    one, newest first."""
    named = latest_named(root)
    ordered = complete_checkpoints(root)
    if named is not None and named in ordered:
        ordered.remove(named)
        ordered.insert(0, named)
    return ordered


def has_checkpoint(root: Path) -> bool:
    return bool(complete_checkpoints(root))


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """Rank 0's trainer state of a checkpoint (step, data position, the run's config, ...)."""
    return json.loads((Path(folder) / "trainer_rank0.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Manifests: sizes and SHA-256 of every file
# --------------------------------------------------------------------------------------------------------------


def checkpoint_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` except the manifest, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    out = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def file_digest(path: Path, *, fsync: bool = False) -> dict[str, Any]:
    """``{"size", "sha256"}`` of one file; ``fsync`` also forces it to disk (a save's files, before the rename)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return {"size": size, "sha256": h.hexdigest()}


def write_text_durably(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically: written to ``<name>.tmp``, fsynced, then renamed over it, so a crash
    leaves the old file or the new one, never a torn one (a full disk: ``DiskFullError``, the temporary removed)."""
    write_text(path, text)


def write_manifest(folder: Path, entries: dict[str, dict[str, Any]], step: int) -> Path:
    """Write ``folder/manifest.json`` (fsynced) listing ``entries`` (relative path -> size and sha256)."""
    path = Path(folder) / MANIFEST
    write_text_durably(path, json.dumps({"step": step, "files": dict(sorted(entries.items()))}, indent=1))
    return path


def read_manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's files (None for a checkpoint written before manifests)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointCorrupt(f"{path}: unreadable manifest ({err})") from None


class CheckpointCorrupt(RuntimeError):
    """A checkpoint's file is missing, has the wrong size or the wrong checksum; the message names the file."""


def verify_files(folder: Path, names: Iterable[str], manifest: dict[str, dict[str, Any]]) -> str | None:
    """Check ``names`` (a share of the manifest) against it: the first problem as a message, or None."""
    folder = Path(folder)
    for name in names:
        expected = manifest[name]
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} has {size} bytes, the manifest says {expected['size']} (truncated or overwritten)"
        if file_digest(path)["sha256"] != expected["sha256"]:
            return f"{path} does not match its SHA-256 in {folder / MANIFEST} (corrupted)"
    return None


def verify_checkpoint(folder: Path) -> None:
    """Raise :class:`CheckpointCorrupt` naming the first bad file of ``folder`` (single process)."""
    manifest = read_manifest(folder)
    if manifest is None:
        if not (Path(folder) / "megatron" / "metadata.json").is_file():
            raise CheckpointCorrupt(f"{folder} is incomplete: no {MANIFEST} and no megatron/metadata.json")
        return
    problem = verify_files(folder, sorted(manifest), manifest)
    if problem:
        raise CheckpointCorrupt(problem)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
