"""Time a learner -> vLLM weight sync of a ~100M-parameter Llama from a TP=2 Megatron learner (2 gloo ranks) against
a plain memcpy of the same bytes, in the same run.

Model: Llama, 12 layers, hidden 768, 12 heads, FFN 2560, char vocabulary (the notes' "m100": 99M params, 379 MiB
fp32). The engine is colocated (in-process on rank 0). For each engine weight-load mode:
- ``inplace`` (ours): the engine keeps plain torch linear weights (no oneDNN pre-pack), each bucket is copied
  straight into its parameters by vLLM's weight loaders;
- ``vllm_reload`` (reference): vLLM's layerwise ``reload_weights``, which re-packs every linear layer;
the sync is ``WeightSynchronizer.sync``: TP gather of the learner's shards to rank 0 (``iter_hf_tensors``,
dst_only), buckets, transport, version, prefix-cache reset. One warm-up sync, then ``--rounds`` timed syncs; after
right before and after each, a memcpy (``copy_`` into preallocated tensors of the same shapes; best of 2 each side)
of the same bytes on rank 0, so that each sync is paired with a memcpy under the same machine load. Reported: the
median over rounds of the per-round ratio sync / memcpy (and engine-side / memcpy), with median times and the
sync split into learner-side gather time and engine-side time. Also: generation throughput of each engine
(plain torch GEMM vs vLLM's pre-packed oneDNN GEMM) and the probe log-prob mismatch after the last sync.

Final line: ``weight_sync: ratio_vs_memcpy=<x> gbytes_per_s=<y>`` for the ``inplace`` mode (whole sync, gather
included). Run: ``.venv/bin/python bench/weight_sync.py [--rounds 5 --bucket-mb 128 --modes inplace,vllm_reload]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _bench(hf_dir: str, modes: list[str], rounds: int, bucket_bytes: int, gen_prompts: int) -> dict:
    import torch
    import torch.distributed as dist

    from rlad_megatron.models import load_hf_model
    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.factory import build_rollout_engine
    from rlad_megatron.weight_sync import SyncVerifier, WeightSynchronizer, make_probe_batch
    from rlad_megatron.weight_sync.megatron_probe import megatron_token_logprobs

    rank = dist.get_rank()
    chunks, arch = load_hf_model(hf_dir, trainable=True)
    learner = megatron_token_logprobs(chunks, arch.vocab_size)
    probe = make_probe_batch(arch.vocab_size, num_sequences=2, length=32)
    out: dict = {}
    version = 0
    for mode in modes:
        config = VLLMEngineConfig(model=hf_dir, weight_load=mode, max_model_len=256, kv_cache_bytes=256 << 20)
        engine, transport = build_rollout_engine(config)
        sync = WeightSynchronizer(transport, bucket_bytes=bucket_bytes)
        sync.last_version = version
        row: dict = {"sync_s": [], "gather_s": [], "memcpy_s": []}
        if engine is not None:
            prompts = [[1] + [10 + (i * 7 + j) % 60 for j in range(8)] for i in range(gen_prompts)]
            engine.generate(prompts[:2], SamplingSettings(max_tokens=4, seed=0))  # warm-up
            start = time.perf_counter()
            res = engine.generate(prompts, SamplingSettings(max_tokens=32, seed=0))
            row["gen_tok_per_s"] = sum(len(c.token_ids) for r in res for c in r.completions) / (
                time.perf_counter() - start)
        for i in range(rounds + 1):
            dist.barrier()
            version += 1
            with torch.no_grad():  # a learner update between syncs
                for p in chunks[0].parameters():
                    p.mul_(1.0 + 1e-3 * (-1) ** i)
            before = min(_memcpy_seconds(chunks, arch) for _ in range(2)) if engine is not None else 0.0
            metrics = sync.sync(chunks, arch, version)
            if engine is not None and i > 0:
                row["sync_s"].append(metrics["sync/seconds"])
                row["gather_s"].append(metrics["sync/gather_seconds"])
                row["gbytes"] = metrics["sync/gbytes"]
                after = min(_memcpy_seconds(chunks, arch) for _ in range(2))
                row["memcpy_s"].append((before + after) / 2)  # paired with this sync: same machine load
        verifier = SyncVerifier(engine, learner, probe)
        mismatch = verifier.measure()
        if engine is not None:
            row["probe_max_abs"] = mismatch["max_abs"]
            row["engine_version_ok"] = engine.weight_version == version
            engine.shutdown()
        out[mode] = row
    return out if rank == 0 else {}


_MEMCPY_BUFFERS: dict = {}


def _memcpy_seconds(chunks, arch) -> float:
    """``copy_`` of the same HF tensor shapes/dtypes (preallocated source and destination) on this rank."""
    import torch

    from rlad_megatron.models.name_map import hf_shapes

    if not _MEMCPY_BUFFERS:
        dtype = next(chunks[0].parameters()).dtype
        for name, shape in hf_shapes(arch).items():
            _MEMCPY_BUFFERS[name] = (torch.randn(shape).to(dtype), torch.empty(shape, dtype=dtype))
    start = time.perf_counter()
    for src, dst in _MEMCPY_BUFFERS.values():
        dst.copy_(src)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=128)
    parser.add_argument("--modes", default="inplace,vllm_reload")
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args()
    modes = args.modes.split(",")
    if modes[0] != "inplace":
        sys.exit("--modes must start with 'inplace' (the final line reports it)")

    from rlad_megatron.testing.distributed import run_distributed
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    with tempfile.TemporaryDirectory(prefix="bench_ws_") as tmp:
        hf_dir = make_tiny_hf_model(Path(tmp) / "m100", family="llama", num_layers=args.layers, hidden_size=768,
                                    intermediate_size=2560, num_heads=12, num_kv_heads=12, max_position_embeddings=512)
        start = time.perf_counter()
        reports = run_distributed(_bench, world_size=2, tp=2, timeout=1800,
                                  args=(str(hf_dir), modes, args.rounds, args.bucket_mb << 20, args.gen_prompts))
    report = reports[0]
    med = statistics.median
    print(f"model: llama {args.layers}x768, ffn 2560, fp32, TP=2 learner on 2 gloo ranks -> colocated engine; "
          f"bucket {args.bucket_mb} MiB; {args.rounds} timed syncs per mode; total {time.perf_counter() - start:.0f} s")
    print(f"{'mode':<12} {'GB':>6} {'sync ms':>8} {'gather ms':>9} {'engine ms':>9} {'memcpy ms':>9} "
          f"{'ratio':>6} {'engine/memcpy':>13} {'gen tok/s':>9} {'probe |dlp|':>11}")
    final = None
    for mode in modes:
        r = report[mode]
        sync_s, gather_s, mem_s = med(r["sync_s"]), med(r["gather_s"]), med(r["memcpy_s"])
        engine_s = med([s - g for s, g in zip(r["sync_s"], r["gather_s"])])
        ratio = med([s / m for s, m in zip(r["sync_s"], r["memcpy_s"])])
        engine_ratio = med([(s - g) / m for s, g, m in zip(r["sync_s"], r["gather_s"], r["memcpy_s"])])
        print(f"{mode:<12} {r['gbytes']:>6.3f} {sync_s * 1e3:>8.1f} {gather_s * 1e3:>9.1f} {engine_s * 1e3:>9.1f} "
              f"{mem_s * 1e3:>9.1f} {ratio:>6.2f} {engine_ratio:>13.2f} {r['gen_tok_per_s']:>9.0f} "
              f"{r['probe_max_abs']:>11.2e}")
        if not r["engine_version_ok"]:
            sys.exit(f"{mode}: the engine does not report the last synced version")
        if final is None:
            final = (ratio, r["gbytes"] / sync_s)
    print(f"weight_sync: ratio_vs_memcpy={final[0]:.2f} gbytes_per_s={final[1]:.2f}")


if __name__ == "__main__":
    # Re-import under a module name of its own, so that the rank processes (which load the body's module from its
    # file) do not run main() again.
    _spec = importlib.util.spec_from_file_location("bench_weight_sync", __file__)
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["bench_weight_sync"] = _module
    _spec.loader.exec_module(_module)
    _module.main()
