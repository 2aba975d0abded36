"""Load a Hugging Face safetensors checkpoint straight into this rank's TP/PP shards, one tensor at a time.

Each rank reads only the slices it holds (``safe_open(...).get_slice(name)[a:b]``): a column-parallel shard reads
its rows, a row-parallel shard its columns, fused QKV reads its query groups' rows of q, k and v. At any moment the
loader holds the slices of one HF tensor group plus the assembled shard, never a second copy of the model.

Errors name the file and the tensor: a corrupted or truncated file, a tensor missing from the checkpoint, a shape
that does not match ``config.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open

from rlad_megatron.models.hf_config import ModelArch
from rlad_megatron.models.name_map import (
    HFGroup, LocalParam, hf_row_ranges, hf_shapes, hf_to_megatron_shard, local_params,
)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class HFCheckpointError(ValueError):
    """A HF checkpoint cannot be read as ``config.json`` describes it (the message names file and tensor)."""


class SafetensorsSource:
    """Reads tensors, or slices of them, from a HF checkpoint directory (sharded with an index, or one file).

    Files are opened lazily and memory-mapped by safetensors; only the requested slice is copied out.
    """

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_FILE
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise HFCheckpointError(f"{index}: not a valid safetensors index ({err})") from err
            self._where = str(index)
        elif (self.dir / SINGLE_FILE).is_file():
            self.weight_map = {}
            self._where = str(self.dir / SINGLE_FILE)
        else:
            raise HFCheckpointError(
                f"no {SINGLE_FILE} or {INDEX_FILE} in {self.dir}: expected a HF checkpoint saved with safetensors "
                "(convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True))"
            )
        self._open: dict[str, object] = {}

    def file_of(self, name: str) -> Path:
        if self.weight_map:
            if name not in self.weight_map:
                raise HFCheckpointError(f"tensor {name!r} is missing from the checkpoint (not in {self._where})")
            return self.dir / self.weight_map[name]
        return self.dir / SINGLE_FILE

    def _handle(self, path: Path, name: str):
        key = str(path)
        if key not in self._open:
            if not path.is_file():
                raise HFCheckpointError(f"{path}: file missing (needed for tensor {name!r})")
            try:
                self._open[key] = safe_open(str(path), framework="pt", device="cpu")
            except Exception as err:  # safetensors raises SafetensorError / OSError for bad headers and sizes
                raise HFCheckpointError(
                    f"{path}: corrupted or truncated safetensors file (while opening it for tensor {name!r}): {err}"
                ) from err
        return self._open[key]

    def read(self, name: str, expected_shape: tuple[int, ...], dim: int | None = None,
             rng: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor ``name`` (checked against ``expected_shape``), or its ``[a:b]`` slice along ``dim`` (0 or 1)."""
        path = self.file_of(name)
        handle = self._handle(path, name)
        if not self.weight_map and name not in handle.keys():
            raise HFCheckpointError(f"tensor {name!r} is missing from the checkpoint ({path})")
        try:
            sl = handle.get_slice(name)
            shape = tuple(sl.get_shape())
            if shape != tuple(expected_shape):
                raise HFCheckpointError(
                    f"{path}: tensor {name!r} has shape {list(shape)}, but config.json implies "
                    f"{list(expected_shape)}"
                )
            if rng is None:
                out = sl[:]
            elif dim == 0:
                out = sl[rng[0]:rng[1]]
            else:
                out = sl[:, rng[0]:rng[1]]
        except HFCheckpointError:
            raise
        except Exception as err:
            raise HFCheckpointError(f"{path}: cannot read tensor {name!r} (corrupted or truncated?): {err}") from err
        return out

    def close(self) -> None:
        self._open.clear()


def load_group_shard(source: SafetensorsSource, group: HFGroup, arch: ModelArch, *, tp_rank: int, tp_size: int,
                     padded_vocab: int) -> torch.Tensor:
    """This rank's Megatron shard of ``group`` read from ``source`` (reads only the slices it needs)."""
    shapes = hf_shapes(arch)
    ranges = hf_row_ranges(group, arch, tp_rank, tp_size, padded_vocab)
    pieces = [
        source.read(name, shapes[name], group.tp_dim, None if ranges is None else ranges[i])
        for i, name in enumerate(group.hf_names)
    ]
    return hf_to_megatron_shard(group, pieces, arch, tp_size, padded_vocab, tp_rank)


@torch.no_grad()
def load_hf_weights(
    model_chunks: Iterable[torch.nn.Module],
    arch: ModelArch,
    hf_dir: str | Path,
    *,
    on_shard: Callable[[str, torch.Tensor], None] | None = None,
) -> None:
    """Fill every parameter of this rank's ``model_chunks`` from the HF checkpoint in ``hf_dir``.

    ``on_shard(megatron_name, shard)`` (for tests and progress) is called with each assembled shard just before
    it is copied into the parameter, i.e. at the loader's moment of highest memory for that tensor.
    """
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    source = SafetensorsSource(hf_dir)
    try:
        for chunk in model_chunks:
            params = dict(chunk.named_parameters())
            entry: LocalParam
            for entry in local_params(chunk, arch):
                param = params[entry.megatron_name]
                padded_vocab = param.shape[0] * tp_size if entry.group.kind == "vocab" else 0
                shard = load_group_shard(source, entry.group, arch, tp_rank=tp_rank, tp_size=tp_size,
                                         padded_vocab=padded_vocab)
                if tuple(shard.shape) != tuple(param.shape):
                    raise HFCheckpointError(
                        f"tensors {list(entry.group.hf_names)} in {hf_dir} give a shard of shape {list(shard.shape)}"
                        f" for Megatron parameter {entry.megatron_name} of shape {list(param.shape)}"
                    )
                if on_shard is not None:
                    on_shard(entry.megatron_name, shard)
                param.copy_(shard)
                del shard
    finally:
        source.close()
