"""The console is for people; everything else a process prints goes to a log file.

    log = send_output_to_log(Path(cfg.trainer.output_dir) / "train.log", tag=f"rank{rank}")
    say("step 20: eval accuracy 0.41")              # the terminal (stderr side)
    tqdm(..., file=console_stream())                 # our progress bar, on the terminal

After :func:`send_output_to_log`, file descriptors 1 and 2 of the process point at the log (opened for appending,
so that every rank and the engine share one file). Whatever writes there lands in the log: ``print`` and
``sys.stderr`` in any library, Python logging (vLLM, Megatron, transformers, torch; a root handler adds time, tag,
level and logger name), ``warnings.warn`` (through :func:`logging.captureWarnings`), C++ warnings (gloo, oneDNN,
vLLM's kernels) and child processes that inherit the descriptors. The terminal stays reachable through duplicates
of the original descriptors (:func:`console_stream`, :func:`say`), which only our own code writes to: the progress
bar, one line per evaluation, errors and results. An uncaught exception is printed to both.

Without :func:`send_output_to_log` (unit tests, a library user), :func:`console_stream` is ``sys.stderr`` and
nothing is redirected.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import TextIO

#: Set (unless the user set them) before the libraries are imported: their download/loading progress bars carry no
#: information on a local run and fill the log with carriage returns.
QUIET_ENV: dict[str, str] = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

LOG_FORMAT = "%(asctime)s {tag} %(levelname)s %(name)s: %(message)s"

_console_out: TextIO | None = None
_console_err: TextIO | None = None
_log_path: Path | None = None


def console_stream(stdout: bool = False) -> TextIO:
    """The terminal: the original stderr (or stdout) when output goes to a log, else ``sys.stderr``/``sys.stdout``."""
    if stdout:
        return _console_out if _console_out is not None else sys.stdout
    return _console_err if _console_err is not None else sys.stderr


def say(text: str, *, stdout: bool = False) -> None:
    """Print one line for the user on the terminal (stderr by default), whatever the redirection."""
    stream = console_stream(stdout)
    stream.write(text + "\n")
    stream.flush()


def log_path() -> Path | None:
    """The log that fds 1 and 2 point at, or None."""
    return _log_path


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(text)  # the log, with the context around it
    sys.stderr.flush()
    console = console_stream()
    console.write(text)
    if _log_path is not None:
        console.write(f"(full log: {_log_path})\n")
    console.flush()


def send_output_to_log(path: str | Path, *, tag: str = "", fresh: bool = False) -> Path:
    """Point fds 1 and 2 at ``path`` (appended to; ``fresh`` truncates it first), keep the terminal for
    :func:`console_stream`, route Python logging and warnings to the log. Idempotent for the same path."""
    global _console_out, _console_err, _log_path
    path = Path(path).resolve()
    if _log_path == path:
        return path
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if tag:  # vLLM formats its own lines (pid, no rank): say which process of the run wrote them (set, not
        # defaulted: a child process, e.g. a rank launched by the quickstart, inherits its parent's value)
        os.environ["VLLM_LOGGING_PREFIX"] = f"{tag} "
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if _console_err is None:  # the first redirection: keep the terminal
        _console_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        _console_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
    fd = os.open(path, flags, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
    # sys.stdout/sys.stderr keep wrapping fds 1 and 2 (now the log); flush each line so that lines of different
    # processes interleave whole and a crash loses nothing.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    _log_path = path
    _route_logging(tag)
    sys.excepthook = _excepthook
    return path


def _route_logging(tag: str) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_rlad_log", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # fd 2: the log
    handler.setFormatter(logging.Formatter(LOG_FORMAT.format(tag=tag or f"pid{os.getpid()}")))
    handler._rlad_log = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def rank_tag() -> str:
    """``rank<N>`` from torchrun's environment (``rank0`` outside torchrun)."""
    return f"rank{os.environ.get('RANK', '0')}"
