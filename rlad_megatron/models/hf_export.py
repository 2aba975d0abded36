"""Megatron shards -> full Hugging Face tensors, one at a time (for export and for the weight sync to vLLM).

:func:`iter_hf_tensors` is COLLECTIVE over the model-parallel group (TP x PP of one data-parallel replica): every
rank of it must call it and iterate it to the end, in the same order. Per HF tensor group, the owning pipeline
stage gathers its TP shards (``all_gather``, or ``gather`` to TP rank 0 with ``dst_only``), converts the fused
Megatron layout to the HF tensors, and then the tensors travel over the pipeline group (``broadcast`` from the
owning stage, or one ``send``/``recv`` to the first stage with ``dst_only``). A rank holds at most one gathered
Megatron tensor plus its HF pieces at a time: never a second copy of the model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from rlad_megatron import atomic_write as aw
from rlad_megatron.device import rank_device
from rlad_megatron.models.hf_config import SUPPORTED_FAMILIES, ModelArch
from rlad_megatron.models.name_map import HFGroup, hf_groups, hf_shapes, megatron_full_to_hf, owned_params

#: Tokenizer and generation files copied next to an export when ``tokenizer_dir`` is given.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def _gather_tp(shard: torch.Tensor, group: HFGroup, *, dst_only: bool) -> list[torch.Tensor] | None:
    """All TP shards of ``group`` (index = TP rank) on every TP rank, or only on TP rank 0 with ``dst_only``."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    tp_size = ps.get_tensor_model_parallel_world_size()
    if group.tp_dim is None or tp_size == 1:
        return [shard]
    tp_group = ps.get_tensor_model_parallel_group()
    shard = shard.contiguous()
    if not dst_only:
        out = [torch.empty_like(shard) for _ in range(tp_size)]
        dist.all_gather(out, shard, group=tp_group)
        return out
    is_dst = ps.get_tensor_model_parallel_rank() == 0
    out = [torch.empty_like(shard) for _ in range(tp_size)] if is_dst else None
    dist.gather(shard, out, dst=dist.get_global_rank(tp_group, 0), group=tp_group)
    return out


def iter_hf_tensors(
    model_chunks: Iterable[torch.nn.Module], arch: ModelArch, *, dst_only: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, tensor)`` for every HF tensor of the model: full (TP-gathered), unpadded, contiguous.

    COLLECTIVE over the model-parallel group: all its ranks call this and iterate fully. With ``dst_only=True``
    only the group's first rank (TP rank 0 of the first pipeline stage) yields; the others yield nothing but
    take part. With expert parallelism (MoE, EP > 1) the collective spans the expert-parallel group too: every
    data-parallel replica holding experts of this one calls it (each replica's first rank yields). Order: :func:`rlad_megatron.models.name_map.hf_groups` (embeddings, layers in order, norm, head).
    The yielded tensors are fresh (not views of parameters); drop each before asking for the next.
    """
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    chunks = list(model_chunks)
    owned = owned_params(chunks, arch)
    pp_size, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    tp_rank = ps.get_tensor_model_parallel_rank()
    ep_size = _expert_parallel_size(arch)
    meta = {key: str(t.dtype).removeprefix("torch.") for key, t in owned.items()}
    if ep_size > 1:  # a stage holds every expert of its layers, spread over its EP ranks
        for group in hf_groups(arch):
            if group.expert is not None and group.key not in meta:
                sibling = next((k for k in meta if k.startswith(f"layers.{group.layer}.mlp.experts.")), None)
                if sibling is not None:
                    meta[group.key] = meta[sibling]
    if pp_size > 1:
        pp_group = ps.get_pipeline_model_parallel_group()
        stage_meta: list[dict[str, str]] = [{} for _ in range(pp_size)]
        dist.all_gather_object(stage_meta, meta, group=pp_group)
    else:
        pp_group, stage_meta = None, [meta]
    shapes = hf_shapes(arch)
    is_dst = tp_rank == 0 and pp_rank == 0
    for group in hf_groups(arch):
        src = next((s for s, m in enumerate(stage_meta) if group.key in m), None)
        if src is None:
            raise RuntimeError(f"no pipeline stage holds {group.key} ({list(group.hf_names)}): model/arch mismatch")
        dtype = getattr(torch, stage_meta[src][group.key])
        tensors: list[torch.Tensor] | None = None
        if pp_rank == src and group.expert is not None and ep_size > 1:
            tensors = _broadcast_expert(group, owned.get(group.key), arch, shapes, dtype, ep_size)
        elif pp_rank == src:
            shards = _gather_tp(owned[group.key], group, dst_only=dst_only)
            if shards is not None:
                tensors = [t.contiguous() for t in megatron_full_to_hf(group, shards, arch)]
                # a replicated tensor (or TP=1) comes back as the parameter itself: hand out a copy
                tensors = [t.clone() if t.data_ptr() == owned[group.key].data_ptr() else t for t in tensors]
            del shards
        if pp_size > 1 and (src != 0 or not dst_only):
            tensors = _move_over_pipeline(group, tensors, shapes, dtype, src, pp_group, dst_only=dst_only)
        if tensors is not None and (is_dst or not dst_only):
            for name, tensor in zip(group.hf_names, tensors):
                yield name, tensor
        del tensors


def _expert_parallel_size(arch: ModelArch) -> int:
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    return ps.get_expert_model_parallel_world_size() if arch.is_moe else 1


def _broadcast_expert(group: HFGroup, shard: torch.Tensor | None, arch: ModelArch, shapes, dtype,
                      ep_size: int) -> list[torch.Tensor]:
    """A routed expert's HF tensors on every rank of the expert-parallel group, from the EP rank that holds it
    (experts are not tensor-parallel, so the shard is the whole Megatron tensor)."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    ep_group = ps.get_expert_model_parallel_group()
    owner = group.expert // (arch.num_experts // ep_size)
    if ps.get_expert_model_parallel_rank() == owner:
        tensors = [t.clone().contiguous() for t in megatron_full_to_hf(group, [shard], arch)]
    else:
        tensors = [torch.empty(shapes[n], dtype=dtype, device=rank_device()) for n in group.hf_names]
    for t in tensors:
        dist.broadcast(t, src=dist.get_global_rank(ep_group, owner), group=ep_group)
    return tensors


def _move_over_pipeline(group, tensors, shapes, dtype, src, pp_group, *, dst_only):
    """Broadcast the HF tensors from stage ``src`` to every stage, or (``dst_only``) send them to stage 0's TP
    rank 0. Returns the tensors on ranks that have them afterwards, else None."""
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    if not dst_only:
        if pp_rank != src:
            tensors = [torch.empty(shapes[n], dtype=dtype, device=rank_device()) for n in group.hf_names]
        for t in tensors:
            dist.broadcast(t, src=dist.get_global_rank(pp_group, src), group=pp_group)
        return tensors
    if tp_rank != 0:
        return None
    if pp_rank == src:
        for t in tensors:
            dist.send(t, dst=dist.get_global_rank(pp_group, 0), group=pp_group)
        return None
    if pp_rank == 0:
        out = [torch.empty(shapes[n], dtype=dtype, device=rank_device()) for n in group.hf_names]
        for t in out:
            dist.recv(t, src=dist.get_global_rank(pp_group, src), group=pp_group)
        return out
    return None


def _shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def export_hf_checkpoint(
    model_chunks: Iterable[torch.nn.Module],
    arch: ModelArch,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 2 << 30,
    dtype: torch.dtype | None = None,
) -> Path | None:
    """Write a HF checkpoint (safetensors shards + index, ``config.json``, tokenizer files) from Megatron shards.

    Collective over every rank; the first model-parallel group of data-parallel rank 0 gathers, and its first rank
    writes. ``dtype`` casts the tensors (default: as trained); ``config.json``'s ``dtype`` always names the dtype of the
    written tensors. Returns ``Path(out_dir)`` on the writing rank,
    None elsewhere. Memory on the writer: one shard file's worth of tensors (``max_shard_bytes``) at most.

    Written into a hidden sibling (``.<name>.partial``) and renamed into place complete: a crash or a full disk
    (:class:`~rlad_megatron.atomic_write.DiskFullError`, naming the path and the bytes free) never leaves half a
    model at ``out_dir``, and a model already there stays whole until the new one is.
    """
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    final = Path(out_dir)
    partial = aw.partial_dir(final)
    advice = f"nothing was left half-written at {final}; free some space there or export elsewhere"
    try:
        with aw.disk_full_guard(partial, "the Hugging Face export", advice):
            return _export_hf_checkpoint(model_chunks, arch, final, tokenizer_dir=tokenizer_dir,
                                         max_shard_bytes=max_shard_bytes, dtype=dtype)
    except BaseException:
        if ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0 \
                and ps.get_pipeline_model_parallel_rank() == 0:
            aw.discard(partial)  # the writer's
        raise


def _export_hf_checkpoint(model_chunks, arch: ModelArch, final: Path, *, tokenizer_dir, max_shard_bytes: int,
                          dtype: torch.dtype | None) -> Path | None:
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    out = aw.partial_dir(final)
    writer = ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0 \
        and ps.get_pipeline_model_parallel_rank() == 0
    if writer:
        aw.start_dir(final)  # removes an interrupted earlier export first
    files: list[list[str]] = []
    total = 0
    written: set[torch.dtype] = set()

    def flush(buf: dict[str, torch.Tensor]) -> None:
        save_file(buf, str(out / f"part-{len(files):05d}.tmp"), metadata={"format": "pt"})
        files.append(list(buf))

    # with expert parallelism the experts live on several data-parallel ranks: they all take part
    if ps.get_data_parallel_rank() == 0 or _expert_parallel_size(arch) > 1:
        buf: dict[str, torch.Tensor] = {}
        buf_bytes = 0
        for name, tensor in iter_hf_tensors(model_chunks, arch, dst_only=True):
            if not writer:
                continue
            if dtype is not None:
                tensor = tensor.to(dtype)
            written.add(tensor.dtype)
            size = tensor.numel() * tensor.element_size()
            if buf and buf_bytes + size > max_shard_bytes:
                flush(buf)
                buf, buf_bytes = {}, 0
            buf[name] = tensor.cpu()  # a shard's worth of tensors waits in host memory, not on the GPU
            buf_bytes += size
            total += size
        if writer and buf:
            flush(buf)
        del buf
    if writer:
        if len(written) != 1:
            raise RuntimeError(f"export to {out}: the tensors have dtypes {sorted(map(str, written))}; expected one "
                               "(pass dtype= to cast them)")
        _finish(out, files, total, arch, tokenizer_dir, written.pop())
        aw.finish_dir(out, final, replace=True)  # fsynced, renamed; an earlier export is replaced only then
    if dist.is_initialized():
        dist.barrier()
    return final if writer else None


def _finish(out: Path, files: list[list[str]], total: int, arch: ModelArch, tokenizer_dir,
            dtype: torch.dtype) -> None:
    if len(files) == 1:
        os.replace(out / "part-00000.tmp", out / "model.safetensors")
    else:
        weight_map = {}
        for i, names in enumerate(files):
            final = _shard_name(i + 1, len(files))
            os.replace(out / f"part-{i:05d}.tmp", out / final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        aw.write_text(out / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    config = dict(arch.hf_config) or _minimal_config(arch)
    # The label must say what the tensors are: a source config's "bfloat16" over fp32 tensors makes transformers
    # and vLLM's automatic dtype reload them as bf16, rounding away small updates.
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    aw.write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer_dir is not None:
        src = Path(tokenizer_dir)
        for name in TOKENIZER_FILES:
            if (src / name).is_file() and src.resolve() != out.resolve():
                aw.copy_file(src / name, out / name)


def _minimal_config(arch: ModelArch) -> dict:
    rope = {"rope_type": "default", **(arch.rope_scaling or {}), "rope_theta": arch.rope_theta}
    return {
        "architectures": [SUPPORTED_FAMILIES[arch.family]], "model_type": arch.family,
        "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size, "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads, "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim, "rms_norm_eps": arch.rms_norm_eps, "rope_parameters": rope,
        "max_position_embeddings": arch.max_position_embeddings, "hidden_act": "silu",
        "tie_word_embeddings": arch.tie_word_embeddings,
    }
