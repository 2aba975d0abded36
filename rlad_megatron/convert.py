"""``rlad-megatron convert``: HF <-> Megatron distributed checkpoints, and Megatron -> Megatron at another TP/PP.

    rlad-megatron convert hf-to-mcore    --hf DIR   --out DIR [--tp N --pp N --dtype bf16]
    rlad-megatron convert mcore-to-hf    --ckpt DIR --out DIR [--tp N --pp N --dtype bf16 --max-shard-gb G]
    rlad-megatron convert mcore-to-mcore --ckpt DIR --out DIR  --tp N --pp N
    (every direction: [--first-stage-layers N --last-stage-layers N] for uneven pipeline stages, [--ep N] for
    expert parallelism of a Qwen2-MoE / Qwen3-MoE model; any layout reads a checkpoint written at any other)

Multi-rank conversions run under torchrun with ``tp * pp`` ranks (more ranks become data-parallel replicas),
e.g. ``torchrun --nproc-per-node 4 -m rlad_megatron.cli convert hf-to-mcore --hf qwen3 --out ck --tp 2 --pp 2``;
one rank works in-process. A Megatron checkpoint is a ``megatron.core.dist_checkpointing`` directory plus
``rlad_arch.json`` (the :class:`ModelArch`, with the HF config), ``rlad_checkpoint.json`` (padded vocabulary, the
layout it was written at) and the tokenizer files, so any layout can read it back (dist_checkpointing reshards).
The torch_dist saver starts a spawn multiprocessing Manager: scripts calling this must sit under
``if __name__ == "__main__":``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rlad_megatron import atomic_write as aw, checkpoint_files as ckf
from rlad_megatron.atomic_write import DiskFullError
from rlad_megatron.models import build_model_chunks, load_hf_model
from rlad_megatron.models.folder_check import check_model_folder
from rlad_megatron.models.hf_config import ModelArch, load_arch, padded_vocab_size
from rlad_megatron.models.hf_export import TOKENIZER_FILES, export_hf_checkpoint
from rlad_megatron.models.layout import stage_overrides
from rlad_megatron.parallel import initialize_model_parallel
from rlad_megatron.refusal import refuse

ARCH_FILE = "rlad_arch.json"
META_FILE = "rlad_checkpoint.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _setup(tp: int, pp: int, ep: int = 1) -> None:
    initialize_model_parallel(tp, pp, expert_parallel=ep)


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def save_megatron_checkpoint(model_chunks: list, arch: ModelArch, out_dir: str | Path, *,
                             tokenizer_dir: str | Path | None = None) -> Path:
    """Collective: write ``model_chunks`` (one per rank, no virtual PP) as a dist checkpoint with our metadata.

    Written into the hidden sibling ``.<name>.partial`` and renamed to ``out_dir`` once complete: a crash or a
    full disk (:class:`~rlad_megatron.atomic_write.DiskFullError`) leaves nothing at ``out_dir``."""
    from megatron.core import dist_checkpointing  # lazy: megatron-core is heavy (seconds)
    from megatron.core import parallel_state as ps

    (chunk,) = model_chunks
    out = Path(out_dir)
    partial = aw.partial_dir(out)
    if _is_rank0():
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(f"checkpoint directory {out} is not empty: choose a new --out")
        aw.start_dir(out)
    dist.barrier()
    advice = "nothing was left at --out; free some space there or choose another --out"
    try:
        with aw.disk_full_guard(partial, "the Megatron checkpoint", advice):
            dist_checkpointing.save(chunk.sharded_state_dict(), str(partial))
            if _is_rank0():
                padded = chunk.embedding.word_embeddings.weight.shape[0] * \
                    ps.get_tensor_model_parallel_world_size() if chunk.pre_process else None
                meta = {"padded_vocab": padded, "tp": ps.get_tensor_model_parallel_world_size(),
                        "pp": ps.get_pipeline_model_parallel_world_size(),
                        "ep": ps.get_expert_model_parallel_world_size() if arch.is_moe else 1,
                        "first_stage_layers": chunk.config.num_layers_in_first_pipeline_stage,
                        "last_stage_layers": chunk.config.num_layers_in_last_pipeline_stage,
                        "dtype": str(next(chunk.parameters()).dtype).removeprefix("torch.")}
                aw.write_text(partial / ARCH_FILE, arch.to_json())
                aw.write_json(partial / META_FILE, meta, indent=2)
                if tokenizer_dir is not None:
                    for name in TOKENIZER_FILES:
                        if (Path(tokenizer_dir) / name).is_file():
                            aw.copy_file(Path(tokenizer_dir) / name, partial / name)
    except BaseException:
        aw.discard(partial)  # whichever rank failed: nothing half-written stays behind
        raise
    dist.barrier()
    if _is_rank0():
        aw.finish_dir(partial, out, what="the Megatron checkpoint", advice=advice)
    dist.barrier()
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """The Megatron folder to read for ``--ckpt``: a convert checkpoint as given, or a trainer checkpoint given as
    its run's output_dir, its ``checkpoints`` folder or one ``step_N`` folder (the newest complete one whose files
    match its manifest; a damaged one is reported and skipped)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"--ckpt {path}: no such folder")
    if (path / ARCH_FILE).is_file():
        return path
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    steps = [path] if ckf.folder_step(path) is not None else ckf.candidates(path)
    if not steps:
        raise FileNotFoundError(f"--ckpt {path}: neither a convert checkpoint ({ARCH_FILE}) nor a trainer run, its "
                                f"checkpoints folder or a step_N checkpoint")
    problems = []
    for folder in steps:
        try:
            ckf.verify_checkpoint(folder)
        except ckf.CheckpointCorrupt as err:
            problems.append(str(err))
            print(f"convert: skipping damaged checkpoint {folder}: {err}", file=sys.stderr, flush=True)
            continue
        if not (folder / "megatron" / ARCH_FILE).is_file():
            raise FileNotFoundError(f"--ckpt {folder}: this trainer checkpoint predates {ARCH_FILE} (written since "
                                    f"checkpoints carry a manifest); resume the run once to write a new one")
        return folder / "megatron"
    raise FileNotFoundError(f"--ckpt {path}: no intact checkpoint: " + "; ".join(problems))


def load_megatron_checkpoint(ckpt_dir: str | Path, *, params_dtype: torch.dtype | None = None,
                             trainable: bool = True, first_stage_layers: int | None = None,
                             last_stage_layers: int | None = None) -> tuple[list, ModelArch]:
    """Build this rank's chunk for the current parallel state (and first/last pipeline stage layer counts) and
    load a checkpoint written at any TP/PP layout."""
    from megatron.core import dist_checkpointing  # lazy: megatron-core is heavy (seconds)
    from megatron.core import parallel_state as ps

    ckpt = Path(ckpt_dir)
    if not (ckpt / ARCH_FILE).is_file():
        raise FileNotFoundError(f"{ckpt} has no {ARCH_FILE}: not a checkpoint written by rlad-megatron convert/train")
    arch = ModelArch.from_json((ckpt / ARCH_FILE).read_text())
    meta = json.loads((ckpt / META_FILE).read_text())
    tp = ps.get_tensor_model_parallel_world_size()
    padded = meta["padded_vocab"] or padded_vocab_size(arch.vocab_size, meta["tp"])
    if padded % tp:
        raise ValueError(f"{ckpt}: padded vocabulary {padded} (written at tp={meta['tp']}) is not divisible by "
                         f"tp={tp}: pick a tensor-parallel size dividing {padded}")
    dtype = params_dtype or getattr(torch, meta["dtype"])
    (chunk,) = build_model_chunks(arch, params_dtype=dtype, padded_vocab=padded,
                                  **stage_overrides(first_stage_layers, last_stage_layers))
    state = dist_checkpointing.load(chunk.sharded_state_dict(), str(ckpt))
    state.pop("optimizer", None)  # a trainer checkpoint's non-sharded optimizer state comes back too: not needed
    missing, unexpected = chunk.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise ValueError(f"{ckpt}: checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
    chunk.train(trainable)
    for p in chunk.parameters():
        p.requires_grad_(trainable)
    return [chunk], arch


def hf_to_mcore(hf_dir: str, out_dir: str, *, tp: int = 1, pp: int = 1, dtype: str = "fp32",
                first_stage_layers: int | None = None, last_stage_layers: int | None = None, ep: int = 1) -> None:
    _setup(tp, pp, ep)
    chunks, arch = load_hf_model(hf_dir, params_dtype=DTYPES[dtype],
                                 **stage_overrides(first_stage_layers, last_stage_layers))
    save_megatron_checkpoint(chunks, arch, out_dir, tokenizer_dir=hf_dir)


def mcore_to_hf(ckpt_dir: str, out_dir: str, *, tp: int = 1, pp: int = 1, dtype: str | None = None,
                max_shard_bytes: int = 2 << 30, first_stage_layers: int | None = None,
                last_stage_layers: int | None = None, ep: int = 1) -> None:
    ckpt = resolve_checkpoint(ckpt_dir)
    _setup(tp, pp, ep)
    chunks, arch = load_megatron_checkpoint(ckpt, trainable=False, first_stage_layers=first_stage_layers,
                                            last_stage_layers=last_stage_layers)
    export_hf_checkpoint(chunks, arch, out_dir, tokenizer_dir=ckpt, max_shard_bytes=max_shard_bytes,
                         dtype=DTYPES[dtype] if dtype else None)


def mcore_to_mcore(ckpt_dir: str, out_dir: str, *, tp: int, pp: int, first_stage_layers: int | None = None,
                   last_stage_layers: int | None = None, ep: int = 1) -> None:
    ckpt = resolve_checkpoint(ckpt_dir)
    _setup(tp, pp, ep)
    chunks, arch = load_megatron_checkpoint(ckpt, trainable=False, first_stage_layers=first_stage_layers,
                                            last_stage_layers=last_stage_layers)
    save_megatron_checkpoint(chunks, arch, out_dir, tokenizer_dir=ckpt)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand (with ``hf-to-mcore``, ``mcore-to-hf``, ``mcore-to-mcore``)."""
    parser = subparsers.add_parser("convert", help="convert checkpoints: HF <-> Megatron, Megatron re-layout",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="direction", required=True)
    a = kinds.add_parser("hf-to-mcore", help="HF safetensors -> Megatron dist checkpoint")
    a.add_argument("--hf", required=True, help="HF model directory (config.json, safetensors, tokenizer)")
    b = kinds.add_parser("mcore-to-hf", help="Megatron dist checkpoint -> HF safetensors")
    b.add_argument("--ckpt", required=True, help="a convert checkpoint, or a training run's output_dir, its "
                                                  "checkpoints/ folder or one checkpoints/step_N folder")
    b.add_argument("--max-shard-gb", type=float, default=2.0, help="largest safetensors file written")
    c = kinds.add_parser("mcore-to-mcore", help="Megatron dist checkpoint -> same at another TP/PP")
    c.add_argument("--ckpt", required=True)
    for sub in (a, b, c):
        sub.add_argument("--out", required=True, help="output directory (must be new or empty)")
        sub.add_argument("--tp", type=int, default=1, help="tensor-parallel size (world = tp*pp*dp)")
        sub.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
        sub.add_argument("--first-stage-layers", type=int, default=None,
                         help="layers on the first pipeline stage (uneven PP; default: even stages)")
        sub.add_argument("--last-stage-layers", type=int, default=None,
                         help="layers on the last pipeline stage (uneven PP; default: even stages)")
        sub.add_argument("--ep", type=int, default=1,
                         help="expert-parallel size of a MoE model (experts sharded over data-parallel ranks)")
    for sub in (a, b):
        sub.add_argument("--dtype", choices=sorted(DTYPES), default="fp32" if sub is a else None,
                         help="parameter dtype to write (default: fp32 for hf-to-mcore, as saved otherwise)")
    parser.set_defaults(func=run)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Everything wrong with a ``convert`` command, before any model is loaded or file written (ValueError)."""
    for flag in ("tp", "pp", "ep"):
        if getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag} {getattr(args, flag)}: must be >= 1")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % (args.tp * args.pp):
        raise ValueError(f"--tp {args.tp} x --pp {args.pp} = {args.tp * args.pp} does not divide the {world} ranks "
                         f"this command runs on (torchrun --nproc-per-node)")
    if getattr(args, "max_shard_gb", 1.0) <= 0:
        raise ValueError(f"--max-shard-gb {args.max_shard_gb}: must be > 0")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} already exists and is not an empty folder: choose a new folder "
                         f"(nothing is ever written over an existing model or checkpoint)")
    if args.direction == "hf-to-mcore":
        check_model_folder(args.hf, "--hf")
    else:
        resolve_checkpoint(args.ckpt)


def run(args: argparse.Namespace) -> int:
    """Execute a parsed ``convert`` command on this rank."""
    try:
        check_arguments(args)
    except (ValueError, FileNotFoundError) as err:  # before any process group: said once under torchrun
        return refuse([str(err)], command=f"rlad-megatron convert {args.direction}")

    stages = {"first_stage_layers": args.first_stage_layers, "last_stage_layers": args.last_stage_layers,
              "ep": args.ep}
    try:
        if args.direction == "hf-to-mcore":
            hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype, **stages)
        elif args.direction == "mcore-to-hf":
            mcore_to_hf(args.ckpt, args.out, tp=args.tp, pp=args.pp, dtype=args.dtype,
                        max_shard_bytes=int(args.max_shard_gb * (1 << 30)), **stages)
        else:
            mcore_to_mcore(args.ckpt, args.out, tp=args.tp, pp=args.pp, **stages)
    except DiskFullError as err:  # every rank that met it says so (the ranks share the disk)
        print(f"rlad-megatron convert {args.direction}: {err}", file=sys.stderr, flush=True)
        return 2
    if _is_rank0():
        print(f"convert {args.direction}: wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m rlad_megatron.convert hf-to-mcore ...``), same as ``rlad-megatron convert``."""
    parser = argparse.ArgumentParser(prog="rlad-megatron")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert", *(argv if argv is not None else __import__("sys").argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
