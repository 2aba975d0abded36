"""What a training command may do with its ``trainer.output_dir``, decided before any process group starts.

- A fresh run refuses a folder that already holds a run (it would truncate its metrics and replace its checkpoints)
  unless told ``--overwrite``, which moves the old run's files aside to ``<output_dir>.old-<UTC time>``.
- ``--resume`` (or ``trainer.resume=auto`` when a checkpoint exists) continues the run, after comparing the saved
  config with the new one: a change to anything that alters the run (models, loss, data, seeds, optimizer, ...) is
  refused with the list of differences unless ``--allow-config-change``; layout changes (parallel sizes,
  micro-batches, placement, checkpoint and evaluation cadence) are always fine. ``--resume`` where there is no
  checkpoint is refused (a typo in the folder would otherwise start a new run silently); ``trainer.resume=auto``
  starts fresh there.

Every rank calls :func:`prepare_output_dir` with the same arguments and reads the same files, so all ranks decide
alike; only global rank 0 moves files, and nothing else writes there before the process group forms.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from rlad_megatron.config import RunConfig, run_config_to_dict
from rlad_megatron.config.parsing import flatten_dotted
from rlad_megatron import checkpoint_files as ckf
from rlad_megatron.atomic_write import write_json

RUN_CONFIG_FILE = "run_config.json"
"""The config the run in this folder was started (or last resumed) with, written by global rank 0."""
RUN_FILES = ("metrics.jsonl", "checkpoints", "hf", "tb", "curves.png", RUN_CONFIG_FILE)
"""What a run leaves in its output_dir; any of them present means the folder holds a run."""

# Settings that change how a run is laid out or observed, not what it computes: free to change on resume.
LAYOUT_KEYS = frozenset({
    "trainer.micro_batch_size", "trainer.output_dir", "trainer.eval_every", "trainer.eval_samples",
    "trainer.eval_temperature", "trainer.eval_top_p", "trainer.save_every", "trainer.keep_checkpoints",
    "trainer.export_hf", "trainer.export_dtype", "trainer.max_consecutive_bad_steps", "trainer.resume",
    "rollout.placement", "rollout.verify_every", "rollout.max_logprob_mismatch", "rollout.kv_cache_mb",
    "rollout.weight_load", "rollout.reward_timeout_s", "teacher.offload", "optim.use_distributed_optimizer",
    "rollout.executor", "rollout.enforce_eager", "rollout.gpu_memory_utilization", "rollout.sleep_level",
    "data.eval_files", "data.eval_split", "data.bad_rows", "rollout.engine_cpus",
})
LAYOUT_SECTIONS = ("parallel.", "logging.", "wandb.", "trainer.wandb.")


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked; the message says why and what to do."""


@dataclasses.dataclass
class RunStart:
    resume: bool
    """Load the newest complete checkpoint (the trainer starts at step 0 when there is none)."""
    moved_to: Path | None = None
    """Where ``--overwrite`` moved the old run (global rank 0 only)."""
    notes: tuple[str, ...] = ()


def run_files(output_dir: Path) -> list[str]:
    """The run files present in ``output_dir`` (empty: no run there)."""
    out = Path(output_dir)
    return [name for name in RUN_FILES if (out / name).exists()]


def _normalise(key: str, value: Any) -> Any:
    # Configs now hold absolute paths (rlad_megatron/config/paths.py); a run saved with relative ones meant them
    # from its working directory.
    if key in ("model.student", "model.teacher") and isinstance(value, str) and value:
        return os.path.abspath(value)
    if key in ("data.train_files", "data.eval_files") and isinstance(value, list):
        return [os.path.abspath(v) if isinstance(v, str) and not v.startswith("hub:") else v for v in value]
    return value


def is_layout_key(key: str) -> bool:
    return key in LAYOUT_KEYS or key.startswith(LAYOUT_SECTIONS)


def run_changes(saved: Mapping[str, Any], new: RunConfig) -> list[str]:
    """The differences between a saved config (a dict, possibly from an older version) and ``new`` that alter what
    the run computes, as ``key: old -> new`` lines. Keys the saved config lacks are compared with their defaults."""
    current = flatten_dotted(run_config_to_dict(new))
    previous = flatten_dotted(run_config_to_dict(RunConfig()))
    previous.update(flatten_dotted(saved))
    changes = []
    for key in sorted(current):
        if is_layout_key(key):
            continue
        old, value = _normalise(key, previous.get(key)), _normalise(key, current[key])
        if old != value:
            changes.append(f"{key}: {previous.get(key)!r} -> {current[key]!r}")
    return changes


def saved_run_config(output_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The config of the run in ``output_dir`` and where it came from: the newest complete checkpoint's, else the
    one recorded at the run's start; ``(None, "")`` when neither exists."""
    out = Path(output_dir)
    for folder in ckf.candidates(out / "checkpoints"):
        try:
            config = ckf.read_trainer_state(folder).get("config")
        except (OSError, ValueError):
            continue  # an unreadable checkpoint is reported (and skipped) when the trainer loads it
        if isinstance(config, dict):
            return config, str(folder)
    path = out / RUN_CONFIG_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8")), str(path)
        except ValueError:
            pass
    return None, ""


def record_run_config(output_dir: Path, config: RunConfig) -> Path:
    """Write ``output_dir/run_config.json`` atomically (global rank 0, at the start of every run and resume)."""
    return write_json(Path(output_dir) / RUN_CONFIG_FILE, run_config_to_dict(config), indent=1)


def _aside_name(out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target = out.with_name(f"{out.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.old-{stamp}-{n}")
    return target


def move_run_aside(output_dir: Path) -> Path:
    """Move the run files of ``output_dir`` (not the user's other files there) into a new sibling folder."""
    out = Path(output_dir)
    target = _aside_name(out)
    target.mkdir(parents=True)
    for name in run_files(out):
        os.replace(out / name, target / name)  # same filesystem: a rename, nothing copied or deleted
    return target


def _describe(out: Path, present: list[str]) -> str:
    done = ckf.complete_checkpoints(out / "checkpoints")
    parts = [f"checkpoints up to step {ckf.folder_step(done[0])}" if done else None]
    parts += [name for name in present if name != "checkpoints"]
    return ", ".join(p for p in parts if p)


def check_output_path(out: Path) -> None:
    """Refuse an ``output_dir`` that is, or lies under, a regular file, or that this user cannot create or write
    into (before anything creates it): the folder itself when it exists, else the nearest folder above it."""
    out = Path(out)
    for path in (out, *out.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                where = "is" if path == out else f"lies under {path}, which is"
                raise RunDirError(f"trainer.output_dir={out} {where} a file, not a folder: choose another "
                                  f"trainer.output_dir (or move the file away)")
            if not os.access(path, os.W_OK | os.X_OK):
                what = "is not writable" if path == out else f"cannot be created: {path} is not writable"
                raise RunDirError(f"trainer.output_dir={out} {what} by this user (uid {os.getuid()}) or its "
                                  f"filesystem is read-only: choose another trainer.output_dir")
            return


def _nothing_to_resume(out: Path, present: list[str]) -> str:
    if not present:
        return (f"--resume: trainer.output_dir={out} holds no run to resume (no checkpoint under "
                f"{out / 'checkpoints'}): check trainer.output_dir (another folder, a typo?), or start a new run "
                "there without --resume (trainer.resume=auto resumes when a checkpoint exists and starts fresh "
                "otherwise)")
    return (f"--resume: trainer.output_dir={out} holds a run ({', '.join(present)}) but no complete checkpoint to "
            f"resume from (nothing under {out / 'checkpoints'}): start it over with --overwrite (its files are moved "
            "to <output_dir>.old-<time>), or choose another trainer.output_dir")


def prepare_output_dir(config: RunConfig, *, resume: bool = False, overwrite: bool = False,
                       allow_config_change: bool = False, rank0: bool = True, requeued: bool = False) -> RunStart:
    """Decide how this command starts (fresh or resumed) in ``config.trainer.output_dir``; raise
    :class:`RunDirError` when it would destroy or silently alter an existing run. ``requeued``: this is a
    restart of the Slurm job whose earlier attempt ran in this folder (rlad_megatron/run_lock.py): it continues
    that run as ``trainer.resume=auto`` would, whatever the command line says."""
    out = Path(config.trainer.output_dir)
    mode = "always" if resume else config.trainer.resume
    notes: list[str] = []
    if requeued and mode == "never":
        mode, overwrite = "auto", False
        notes.append(f"Slurm requeued this job: continuing its run in {out} (as trainer.resume=auto)")
    elif requeued:  # --resume: continues as trainer.resume=auto would, also when its first attempt saved nothing
        mode = "auto"
    if overwrite and mode != "never":
        raise RunDirError("--overwrite starts a new run; it cannot be combined with --resume or trainer.resume=auto")
    check_output_path(out)
    present = run_files(out)

    if mode == "never":
        if not present:
            return RunStart(resume=False)
        if overwrite:
            moved = move_run_aside(out) if rank0 else None
            note = f"--overwrite: moved the previous run in {out} to {moved}" if moved else ""
            return RunStart(resume=False, moved_to=moved, notes=(note,) if note else ())
        raise RunDirError(
            f"trainer.output_dir={out} already holds a run ({_describe(out, present)}). To continue it, add --resume "
            f"(or set trainer.resume=auto). To start a new run, choose another trainer.output_dir, or add "
            f"--overwrite to move the old run to {out}.old-<time> (nothing is deleted)."
        )

    has_checkpoint = ckf.has_checkpoint(out / "checkpoints")
    if mode == "always" and not has_checkpoint:
        raise RunDirError(_nothing_to_resume(out, present))
    saved, source = saved_run_config(out)
    if saved is None and present and mode == "auto":
        raise RunDirError(
            f"trainer.resume=auto: {out} holds files of a run ({', '.join(present)}) but neither a checkpoint nor "
            f"{RUN_CONFIG_FILE} to tell which run: choose another trainer.output_dir, or run once with --overwrite"
        )
    if saved is not None:
        changes = run_changes(saved, config)
        if changes and not allow_config_change:
            listing = "\n  ".join(changes)
            raise RunDirError(
                f"resuming {out} with a config that changes the run (saved config: {source}):\n  {listing}\n"
                f"Undo these changes, choose another trainer.output_dir for a new run, or add "
                f"--allow-config-change to continue with them."
            )
        if changes:
            notes.append(f"--allow-config-change: continuing {out} with {len(changes)} change(s): "
                         + "; ".join(changes))
    if mode == "auto" and not has_checkpoint:
        notes.append(f"trainer.resume=auto: no checkpoint under {out / 'checkpoints'}; starting at step 0")
        return RunStart(resume=False, notes=tuple(notes))
    return RunStart(resume=True, notes=tuple(notes))
