"""Writing run artifacts: nothing half-written at a destination, and a full disk reported as one.

    write_text(path, text)                        # <name>.tmp beside it, fsynced, renamed over it
    with atomic_file(path, "wb") as f: ...        # the same for any writer that takes a file object
    partial = start_dir(out)                      # a folder written by several ranks: .<name>.partial beside it,
    ...write into partial...                      # renamed into place (``finish_dir``) when complete,
    finish_dir(partial, out)                      # removed (``discard``) when not
    with disk_full_guard(path, "metrics"): f.write(line)   # an append-only file (metrics.jsonl, TensorBoard)

Every helper removes its temporary on failure and turns a full disk into :class:`DiskFullError`, whose message says
that the disk is full, where (the path and its filesystem) and how many bytes are left. A full disk is recognised
by ``ENOSPC``/``EDQUOT`` anywhere in the exception's chain or text, or, when a library hides the error (torch's zip
writer reports a short write as ``[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``), by
less than :data:`NEARLY_FULL_BYTES` left on the destination's filesystem right after the failure.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Iterator

NEARLY_FULL_BYTES = 1 << 20
"""A failed write with less than this left on the filesystem is reported as a full disk."""
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "[Errno 28]", "[Errno 122]")


class DiskFullError(RuntimeError):
    """A write failed because the disk (or the user's quota) is full; the message names the path and the bytes
    free. ``path`` is what was being written; ``free`` the bytes left on its filesystem (None: unknown)."""

    def __init__(self, message: str, path: Path, free: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.free = free


def _existing(path: Path) -> Path | None:
    """``path`` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def free_bytes(path: str | Path) -> int | None:
    """Bytes available to this user on the filesystem holding ``path`` (or its nearest existing ancestor)."""
    found = _existing(Path(path))
    if found is None:
        return None
    try:
        return shutil.disk_usage(found).free
    except OSError:
        return None


def mount_point(path: str | Path) -> Path | None:
    """The mount point of the filesystem holding ``path``."""
    found = _existing(Path(path))
    if found is None:
        return None
    found = Path(os.path.realpath(found))
    while not os.path.ismount(found) and found != found.parent:
        found = found.parent
    return found


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or len(seen) > 32:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def is_disk_full(err: BaseException, path: str | Path | None = None) -> bool:
    """Whether ``err``, raised while writing ``path``, comes from a full disk (see the module docstring)."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        if any(text in str(e) for text in _FULL_TEXTS):
            return True
    if path is None:
        return False
    free = free_bytes(path)
    return free is not None and free < NEARLY_FULL_BYTES


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def disk_full_error(path: str | Path, what: str = "", advice: str = "") -> DiskFullError:
    """The :class:`DiskFullError` for a failed write of ``what`` at ``path``, with ``advice`` appended."""
    path = Path(path)
    free = free_bytes(path)
    where = f"{free} bytes ({_size(free)}) free" if free is not None else "free space unknown"
    mount = mount_point(path)
    message = (f"the disk is full: writing {what + ' ' if what else ''}{path} failed ({where} on the filesystem "
               f"mounted at {mount or '?'} after the failed write)")
    return DiskFullError(message + (f"; {advice}" if advice else ""), path, free)


@contextlib.contextmanager
def disk_full_guard(path: str | Path, what: str = "", advice: str = "") -> Iterator[None]:
    """Turn a full disk met inside the block (writing ``path``) into :class:`DiskFullError`; other errors pass."""
    try:
        yield
    except (DiskFullError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if is_disk_full(err, path):
            raise disk_full_error(path, what, advice) from err
        raise


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------------------
# Single files
# --------------------------------------------------------------------------------------------------------------


def temp_file(path: str | Path) -> Path:
    """Where :func:`atomic_file` writes ``path`` before the rename."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", *, what: str = "", advice: str = "",
                encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """A file object writing ``path``'s temporary; on success it is fsynced and renamed over ``path`` (which
    keeps its old content until then), on failure removed. A full disk raises :class:`DiskFullError`."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode {mode!r}: use 'w' or 'wb'")
    path = Path(path)
    tmp = temp_file(path)
    try:
        with disk_full_guard(path, what, advice):
            with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str, *, what: str = "", advice: str = "") -> Path:
    """Replace ``path`` by ``text`` atomically (a crash leaves the old file or the new one, never a torn one)."""
    with atomic_file(path, "w", what=what, advice=advice) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, value: Any, *, indent: int | None = 1, what: str = "", advice: str = "",
               **dumps: Any) -> Path:
    return write_text(path, json.dumps(value, indent=indent, **dumps), what=what, advice=advice)


def copy_file(src: str | Path, dst: str | Path, *, what: str = "", advice: str = "") -> Path:
    """Copy ``src`` to ``dst`` atomically (contents only, like :func:`shutil.copyfile`)."""
    with open(src, "rb") as source, atomic_file(dst, "wb", what=what, advice=advice) as f:
        shutil.copyfileobj(source, f)
    return Path(dst)


# --------------------------------------------------------------------------------------------------------------
# Folders (possibly written by several ranks)
# --------------------------------------------------------------------------------------------------------------


def partial_dir(final: str | Path) -> Path:
    """The hidden sibling a folder is written in before it is renamed to ``final``: ``.<name>.partial``."""
    final = Path(final)
    return final.with_name(f".{final.name}.partial")


def start_dir(final: str | Path) -> Path:
    """Create (empty) and return ``final``'s partial folder; a leftover of an interrupted write is removed first.
    One process calls it; writers then fill the folder."""
    partial = partial_dir(final)
    partial.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    return partial


def discard(partial: str | Path) -> None:
    """Remove a partial folder after a failed write (any process may; errors are ignored)."""
    shutil.rmtree(partial, ignore_errors=True)


def finish_dir(partial: str | Path, final: str | Path, *, replace: bool = False, what: str = "",
               advice: str = "") -> Path:
    """fsync every file and folder of ``partial``, then rename it to ``final``. ``final`` may be missing or an
    empty folder; with ``replace`` an existing ``final`` is set aside and removed only once the new one is in
    place. On failure ``partial`` is removed (a full disk raises :class:`DiskFullError`). One process calls it."""
    partial, final = Path(partial), Path(final)
    previous = None
    try:
        with disk_full_guard(partial, what, advice):
            for dirpath, _, names in os.walk(partial):
                for name in names:
                    with open(Path(dirpath) / name, "rb") as f:
                        os.fsync(f.fileno())
                fsync_dir(dirpath)
            if replace and final.exists():
                previous = final.with_name(f".{final.name}.replaced")
                shutil.rmtree(previous, ignore_errors=True)
                os.replace(final, previous)
            os.replace(partial, final)  # over a missing or empty folder
            fsync_dir(final.parent)
    except BaseException:
        discard(partial)
        if previous is not None and not final.exists():
            os.replace(previous, final)  # put the earlier one back
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, replace: bool = False, what: str = "", advice: str = "") -> Iterator[Path]:
    """One process writes a folder: yields its partial folder, renamed to ``final`` when the block succeeds and
    removed when it fails (a full disk raises :class:`DiskFullError`)."""
    partial = start_dir(final)
    try:
        with disk_full_guard(partial, what, advice):
            yield partial
    except BaseException:
        discard(partial)
        raise
    finish_dir(partial, final, replace=replace, what=what, advice=advice)
