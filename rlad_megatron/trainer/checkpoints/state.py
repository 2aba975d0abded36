"""Trainer checkpoints: one folder per step, written aside and renamed into place, verified on resume.

    checkpoints/step_000012/megatron/             model + optimizer (Megatron distributed checkpoint, any layout),
                                                  with rlad_arch.json and the tokenizer (``convert mcore-to-hf``)
    checkpoints/step_000012/trainer_rank<r>.json  rank r's :class:`TrainerState` (step, data position, weight
                                                  version, the batch generated ahead, config) and RNG states
    checkpoints/step_000012/trainer_rank<r>.safetensors  the tensors of rank r's trainer state (a batch generated
                                                  ahead in async mode), when it has any
    checkpoints/step_000012/manifest.json         every file with its size and SHA-256
    checkpoints/latest                            "step_000012", switched last

A save writes ``.tmp_step_000012``, fsyncs every file (ranks share the work), writes the manifest, renames the folder
to ``step_000012`` and only then switches ``latest`` and prunes older checkpoints: a crash or a full disk at any point
leaves every complete checkpoint in place. Re-saving an existing step sets the old copy aside until the new one is
in place. On resume the newest complete checkpoint whose files match its manifest is loaded; a damaged one is
skipped with a message naming the bad file (see ``rlad_megatron.checkpoint_files``).

The trainer saves and loads a :class:`TrainerState` (typed; it reads checkpoints written before a field existed);
:func:`save_trainer_checkpoint` / :func:`load_trainer_checkpoint` are the folder-level operations it uses.
"""
from __future__ import annotations

import json
import dataclasses
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from rlad_megatron import atomic_write as aw
from rlad_megatron import checkpoint_files as ckf
from rlad_megatron.convert import ARCH_FILE, META_FILE
from rlad_megatron.learner.checkpoint import load_checkpoint, save_checkpoint, unwrap
from rlad_megatron.models.hf_export import TOKENIZER_FILES
from rlad_megatron.trainer.faults import pause_point


@dataclasses.dataclass
class TrainerState:
    """What a trainer checkpoint holds besides the model and the optimizer, per rank (its JSON file; tensors, such
    as a batch generated ahead, in the rank's safetensors file). Saves and loads itself."""

    step: int
    """The last step the run completed."""
    data: dict[str, Any]
    """The prompt stream's position (``PromptStream.state_dict()``)."""
    weight_version: int = 1
    """The weight version of the saved weights (checkpoints written before versions: 1)."""
    rollouts_ahead: dict[str, Any] | None = None
    """The batch generated ahead in async mode (``RolloutPipeline.state_dict()``; None: none, or an older
    checkpoint)."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The run config the checkpoint was written under."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "TrainerState":
        """A state read back; keys of checkpoints written before a field existed take its default, keys this
        version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})

    def save(self, root: Path, model_chunks, optimizer, *, keep: int, arch: Any = None,
             tokenizer_dir: str | None = None) -> Path:
        """Collective: the checkpoint of step :attr:`step` under ``root`` (:func:`save_trainer_checkpoint`)."""
        state = self.to_dict()
        step = state.pop("step")
        return save_trainer_checkpoint(root, step, model_chunks, optimizer, state, keep, arch=arch,
                                       tokenizer_dir=tokenizer_dir)

    @classmethod
    def load(cls, folder: Path, model_chunks, optimizer) -> "TrainerState":
        """Collective: restore model, optimizer and this rank's RNG from ``folder``; the trainer's state."""
        return cls.from_dict(load_trainer_checkpoint(folder, model_chunks, optimizer))


@dataclasses.dataclass
class RngState:
    """This rank's torch, Python and NumPy random states, as JSON-able lists."""

    torch: list[int]
    python: list[Any]
    numpy: list[Any]

    @classmethod
    def capture(cls) -> "RngState":
        return cls(torch=torch.get_rng_state().tolist(),
                   python=[list(x) if isinstance(x, tuple) else x for x in random.getstate()],
                   numpy=[x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()])

    def restore(self) -> None:
        torch.set_rng_state(torch.tensor(self.torch, dtype=torch.uint8))
        version, internal, gauss = self.python
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = self.numpy
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


TENSOR_REF = "__tensor__"


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able copy of ``value`` in which every tensor leaf is replaced by ``{"__tensor__": name}`` and stored
    under that name (its dotted path) in ``tensors``."""
    if isinstance(value, torch.Tensor):
        name = path or "value"
        tensors[name] = value.detach().cpu().contiguous()
        return {TENSOR_REF: name}
    if isinstance(value, dict):
        return {key: split_tensors(item, tensors, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [split_tensors(item, tensors, f"{path}.{i}") for i, item in enumerate(value)]
    return value


def join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`."""
    if isinstance(value, dict):
        if set(value) == {TENSOR_REF}:
            if value[TENSOR_REF] not in tensors:
                raise ckf.CheckpointCorrupt(f"the trainer state names tensor {value[TENSOR_REF]!r}, which its "
                                            "safetensors file does not hold")
            return tensors[value[TENSOR_REF]]
        return {key: join_tensors(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [join_tensors(item, tensors) for item in value]
    return value


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder (``latest``'s when complete), without checking its files."""
    found = ckf.candidates(root)
    return found[0] if found else None


def _write_convert_metadata(megatron_dir: Path, model_chunks, arch: Any, tokenizer_dir: str | None) -> None:
    """What ``rlad-megatron convert mcore-to-hf`` needs next to the weights: the architecture, the padded vocabulary
    and layout it was written at, the tokenizer files (global rank 0 = first pipeline stage)."""
    # megatron-core stays out of the import of this module (the unit tests read checkpoints without it)
    from megatron.core import parallel_state as ps

    chunk = unwrap(model_chunks[0])
    meta_path = megatron_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({
        "padded_vocab": chunk.embedding.word_embeddings.weight.shape[0] * ps.get_tensor_model_parallel_world_size(),
        "tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
        "dtype": str(next(chunk.parameters()).dtype).removeprefix("torch."),
    })
    aw.write_json(meta_path, meta, indent=2)
    aw.write_text(megatron_dir / ARCH_FILE, arch.to_json())
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                aw.copy_file(Path(tokenizer_dir) / name, megatron_dir / name)


def _digest_share(folder: Path) -> dict[str, dict[str, Any]]:
    """Collective: fsync and checksum every file of ``folder``, each rank a share; every rank gets all entries."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = ckf.checkpoint_files(folder)
    mine = {name: ckf.file_digest(folder / name, fsync=True) for name in names[rank::world]}
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    entries: dict[str, dict[str, Any]] = {}
    for part in gathered:
        entries.update(part)
    return entries


def save_trainer_checkpoint(root: Path, step: int, model_chunks, optimizer, trainer_state: dict[str, Any],
                            keep: int, *, arch: Any = None, tokenizer_dir: str | None = None) -> Path:
    """Collective. Writes step ``step``'s checkpoint aside, makes it durable, renames it into place, then moves
    ``latest`` to it and prunes all but the ``keep`` newest complete checkpoints."""
    rank = dist.get_rank()
    root = Path(root)
    final = root / ckf.step_folder_name(step)
    tmp = root / f"{ckf.TMP_PREFIX}{step:06d}"

    def full():  # a full disk is reported as such (DiskFullError: the path, the bytes free)
        return aw.disk_full_guard(tmp, f"the checkpoint of step {step}", f"the complete checkpoints under {root} "
                                  "are intact: free some space, then continue with --resume")

    if rank == 0:
        with full():
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # an interrupted earlier save of this step: never complete
            tmp.mkdir()
    dist.barrier()
    try:
        with full():
            save_checkpoint(tmp / "megatron", model_chunks, optimizer)
            if rank == 0 and arch is not None:
                _write_convert_metadata(tmp / "megatron", model_chunks, arch, tokenizer_dir)
            tensors: dict[str, torch.Tensor] = {}
            state = split_tensors(dict(trainer_state, step=step, rng=dataclasses.asdict(RngState.capture())), tensors)
            if tensors:  # fsynced with every other file by _digest_share
                save_file(tensors, str(tmp / f"trainer_rank{rank}.safetensors"))
            ckf.write_text_durably(tmp / f"trainer_rank{rank}.json", json.dumps(state))
    except BaseException:
        if rank == 0:  # free what this attempt wrote; complete checkpoints are untouched
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()
    pause_point("checkpoint", step)  # fault-injection tests: every rank, files written, no manifest yet
    entries = _digest_share(tmp)
    if rank == 0:
        try:
            with full():
                ckf.write_manifest(tmp, entries, step)
                for dirpath, _, _ in os.walk(tmp):
                    ckf.fsync_dir(Path(dirpath))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():  # a re-save of this step: keep the complete copy until the new one is in place
            os.replace(final, final.with_name(f"{final.name}.old-{os.getpid()}"))
        os.replace(tmp, final)
        ckf.fsync_dir(root)
        with full():  # the step is in place; a pointer left unchanged names an older complete one
            ckf.write_text_durably(root / ckf.LATEST, final.name)
        ckf.fsync_dir(root)
        _prune(root, keep, current=final)
    dist.barrier()
    return final


def _prune(root: Path, keep: int, current: Path) -> None:
    """Remove interrupted saves, set-aside copies and all but the ``keep`` newest complete checkpoints."""
    complete = [p for p in ckf.complete_checkpoints(root) if p.name == ckf.step_folder_name(ckf.folder_step(p))]
    kept = {current, *complete[:keep]}
    for p in root.iterdir():
        if not p.is_dir() or p in kept:
            continue
        if p.name.startswith(ckf.TMP_PREFIX) or ckf.folder_step(p) is not None:
            shutil.rmtree(p, ignore_errors=True)


def _verify_collective(folder: Path) -> str | None:
    """Every rank checks a share of ``folder``'s manifest; all ranks get the same verdict (the first problem)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        manifest = ckf.read_manifest(folder)
    except ckf.CheckpointCorrupt as err:
        return str(err)
    if manifest is None:
        if not (folder / "megatron" / "metadata.json").is_file():
            return f"{folder} is incomplete (no {ckf.MANIFEST})"
        return None  # written before manifests: nothing to check against
    problem = ckf.verify_files(folder, sorted(manifest)[rank::world], manifest)
    problems: list[Any] = [None] * world
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p), None)


def find_loadable_checkpoint(root: Path) -> Path | None:
    """Collective. The newest checkpoint under ``root`` whose files match its manifest; damaged ones are reported
    on stderr and skipped. None when there is no checkpoint at all; an error when every one is damaged."""
    root = Path(root)
    rank0 = dist.get_rank() == 0
    named = ckf.latest_named(root)
    found = ckf.candidates(root)
    if named is not None and named not in found and rank0:
        print(f"[rlad] checkpoint: {root / ckf.LATEST} names {named.name}, which is missing or incomplete; "
              f"using the newest complete checkpoint instead", file=sys.stderr, flush=True)
    damaged = []
    for folder in found:
        problem = _verify_collective(folder)
        if problem is None:
            return folder
        damaged.append(problem)
        if rank0:
            print(f"[rlad] checkpoint {folder.name} is damaged: {problem}; falling back to the previous complete "
                  f"checkpoint", file=sys.stderr, flush=True)
    if damaged:
        raise ckf.CheckpointCorrupt(f"no loadable checkpoint under {root}: " + "; ".join(damaged))
    return None


def load_trainer_checkpoint(folder: Path, model_chunks, optimizer) -> dict[str, Any]:
    """Collective. Restores model, optimizer and this rank's RNG; returns the trainer state (step, data, ...)."""
    load_checkpoint(folder / "megatron", model_chunks, optimizer)
    rank = dist.get_rank()
    # A resume with more ranks than the save: the new ranks take rank 0's state (RNG included).
    source = rank if (folder / f"trainer_rank{rank}.json").exists() else 0
    state = json.loads((folder / f"trainer_rank{source}.json").read_text())
    tensor_file = folder / f"trainer_rank{source}.safetensors"
    if tensor_file.exists():
        state = join_tensors(state, load_file(str(tensor_file)))
    RngState(**state.pop("rng")).restore()
    return state
