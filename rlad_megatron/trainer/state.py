"""Trainer checkpoints: one folder per step, a ``latest`` pointer written last, everything needed to resume.

    checkpoints/step_000012/megatron/        model + optimizer (Megatron distributed checkpoint, any layout)
    checkpoints/step_000012/trainer_rank<r>.json   step, data position, weight version, RNG states of rank r
    checkpoints/latest                        "step_000012", replaced atomically after the folder is complete

A crash at any point leaves ``latest`` naming the previous complete checkpoint; incomplete folders are ignored and
removed by the next save.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from rlad_megatron.learner.checkpoint import load_checkpoint, save_checkpoint


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state().tolist(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    folder = root / pointer.read_text().strip()
    if not (folder / "megatron" / "metadata.json").exists():
        raise FileNotFoundError(f"{pointer} names {folder}, which holds no complete checkpoint")
    return folder


def save_trainer_checkpoint(root: Path, step: int, model_chunks, optimizer, trainer_state: dict[str, Any],
                            keep: int) -> Path:
    """Collective. Writes step ``step``'s checkpoint and then moves ``latest`` to it."""
    rank = dist.get_rank()
    folder = root / f"step_{step:06d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt at this step
        folder.mkdir()
    dist.barrier()
    save_checkpoint(folder / "megatron", model_chunks, optimizer)
    state = dict(trainer_state, step=step, rng=_rng_state())
    tmp = folder / f"trainer_rank{rank}.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / f"trainer_rank{rank}.json")
    dist.barrier()
    if rank == 0:
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(folder.name)
        os.replace(pointer_tmp, root / "latest")
        _prune(root, keep, current=folder.name)
    dist.barrier()
    return folder


def _prune(root: Path, keep: int, current: str) -> None:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    complete = [p for p in folders if (p / "megatron" / "metadata.json").exists()]
    for p in folders:
        if p.name != current and (p not in complete or p in complete[:-keep]):
            shutil.rmtree(p, ignore_errors=True)


def load_trainer_checkpoint(folder: Path, model_chunks, optimizer) -> dict[str, Any]:
    """Collective. Restores model, optimizer and this rank's RNG; returns the trainer state (step, data, ...)."""
    load_checkpoint(folder / "megatron", model_chunks, optimizer)
    rank = dist.get_rank()
    own = folder / f"trainer_rank{rank}.json"
    # A resume with more ranks than the save: the new ranks take rank 0's state (RNG included).
    state = json.loads((own if own.exists() else folder / "trainer_rank0.json").read_text())
    _set_rng_state(state.pop("rng"))
    return state
