"""Model + optimizer state as a Megatron distributed checkpoint, reshardable to any TP/PP/DP layout.

The optimizer state uses the ``fully_reshardable`` format: the only one of megatron-core 0.16.1's formats that both
changes TP on load and restores torch AdamW's ``step`` correctly (``docs/megatron_on_cpu.md``, "Distributed checkpoints"). Files are
written into a temporary sibling folder and renamed into place only when every rank has finished, so a crash during
a save never leaves a half-written checkpoint under the final name.

Loading goes through megatron's ``torch.load``, which in torch >= 2.6 is ``weights_only=True`` by default.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from rlad_megatron.atomic_write import write_json
from rlad_megatron.compat.megatron_fallbacks import prepare_optimizer_for_load

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _model_key(index: int, count: int) -> str:
    return "model" if count == 1 else f"model{index}"


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _has_optimizer_state(optimizer: Any) -> bool:
    """False before the first optimizer step: torch AdamW has no state yet and megatron cannot save it."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(len(getattr(getattr(o, "optimizer", o), "state", {})) > 0 for o in inner)


def _sharded_state(model_chunks: Sequence[torch.nn.Module], optimizer: Any, *, loading: bool) -> dict:
    state: dict[str, Any] = {}
    for i, chunk in enumerate(model_chunks):
        state[_model_key(i, len(model_chunks))] = unwrap(chunk).sharded_state_dict()
    if optimizer is not None:
        if loading:
            prepare_optimizer_for_load(optimizer)
        model_state = {k: v for k, v in state.items() if k.startswith("model")}
        flat_model_state: dict[str, Any] = {}
        for v in model_state.values():
            flat_model_state.update(v)
        state["optimizer"] = optimizer.sharded_state_dict(
            flat_model_state, is_loading=loading, metadata=OPTIMIZER_METADATA
        )
    return state


def save_checkpoint(path: str | Path, model_chunks: Sequence[torch.nn.Module], optimizer: Any = None) -> Path:
    """Save model (and optimizer) state to a new folder ``path``, atomically. Collective over all ranks.

    Refuses to overwrite: callers keep one folder per step and point to the newest with ``write_latest``.
    """
    from megatron.core import dist_checkpointing  # lazy: megatron-core is heavy (seconds)

    final = Path(path)
    if final.exists():
        raise FileExistsError(f"checkpoint folder {final} already exists; pick a new folder per save")
    partial = final.with_name(final.name + ".partial")
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    if optimizer is not None and not _has_optimizer_state(optimizer):
        optimizer = None  # nothing to save yet; a resume starts the optimizer afresh, as the run would have
    dist_checkpointing.save(_sharded_state(model_chunks, optimizer, loading=False), str(partial))
    dist.barrier()
    if dist.get_rank() == 0:
        write_json(partial / "rlad_checkpoint.json", {"optimizer": optimizer is not None}, indent=None)
        os.replace(partial, final)
    dist.barrier()
    return final


def load_checkpoint(
    path: str | Path, model_chunks: Sequence[torch.nn.Module], optimizer: Any = None
) -> None:
    """Load model (and optimizer) state saved by ``save_checkpoint`` at any TP/PP/DP layout. Collective."""
    from megatron.core import dist_checkpointing  # lazy: megatron-core is heavy (seconds)

    path = Path(path)
    if not (path / "metadata.json").exists():
        raise FileNotFoundError(
            f"{path} is not a Megatron distributed checkpoint (no metadata.json); a folder ending in '.partial' is "
            f"an interrupted save and cannot be loaded"
        )
    marker = path / "rlad_checkpoint.json"
    if optimizer is not None and marker.exists() and not json.loads(marker.read_text())["optimizer"]:
        optimizer = None  # saved before the first optimizer step
    loaded = dist_checkpointing.load(_sharded_state(model_chunks, optimizer, loading=True), str(path))
    for i, chunk in enumerate(model_chunks):
        unwrap(chunk).load_state_dict(loaded[_model_key(i, len(model_chunks))], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
