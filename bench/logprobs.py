"""Peak extra memory and time of token log-probs, forward + backward, from vocabulary-sharded logits.

Variants, on the same inputs (default 8192 tokens x 65536 vocab, bf16, TP=1 and TP=2 over gloo):
- ``ours``: ``rlad_megatron.logprobs.vocab_parallel_token_logprobs``;
- ``megatron``: megatron-core's ``tensor_parallel.vocab_parallel_cross_entropy`` (log-prob = -loss);
- ``naive``: gather the vocabulary (Megatron's autograd all-gather at TP>1), ``log_softmax`` in fp32, ``gather``.

Each step is ``logprobs = f(logits_shard, targets); (logprobs * g).sum().backward()`` with a fixed upstream ``g``.

Memory, measured honestly on CPU: every (variant, TP) runs in fresh processes (one per rank). After imports,
inputs and a small warm-up, the process resets its peak-RSS mark (``echo 5 > /proc/self/clear_refs`` resets
``VmHWM`` to the current RSS), reads ``VmRSS`` (the baseline), runs one full forward + backward, and reads
``VmHWM``. Extra = HWM - baseline: every page touched by the step's temporaries and by the logits' gradient,
which every variant must produce (it stays alive, as it would in training: 1 L). Reported as a multiple of L,
the bytes of this rank's logits shard; at TP=2 the worse of the two ranks. Caveat: the allocator may reuse
pages already resident before the reset, so this can only under-count by what was free-but-resident at the
baseline (small here: the warm-up is 64 rows).

Threads: one per rank by default (``--threads``). This box's 2 cores are shared by several engineers (load
averages of 7-19 were seen); with 2 OpenMP threads per process under such oversubscription every parallel region
waits for a scheduler slice, so the time measures the scheduler (it penalises many small ops, i.e. chunking),
not the kernel. At TP=2 one thread per rank is also what the cores allow.

Time: one process group per TP runs ours and megatron interleaved (a round = one step of each, ranks barrier'd
around each step), after one warm-up round; the median over rounds, so that a load change on a shared machine hits
both alike. The naive variant, which needs far more memory, is timed in its own process group.

Prints a table, then the final line
``logprobs: ours_mem_ratio_vs_megatron=<x> ours_time_ratio_vs_megatron=<y>`` (worst over the TP sizes run).
Run: ``.venv/bin/python bench/logprobs.py [--tokens 8192 --vocab 65536 --tp 1,2 --rounds 3]``.

``--fused`` (``--hidden H``): the output layer fused with the log-probs (``rlad_megatron.logprobs.fused``) against
today's path, both from hidden states ``[tokens, H]`` (replicated over TP, as Megatron's output layer without
sequence parallelism) and this rank's weight shard ``[V/TP, H]``:
- ``today``: Megatron's output-layer linear (``linear_with_grad_accumulation_and_async_allreduce``: the logits
  ``[tokens, V/TP]``, the gradient of the hidden states all-reduced over TP), then the vocab-parallel kernel;
- ``fused``: ``fused_token_logprobs`` (default chunks), never more than one chunk of logits.
As in training, the weight has Megatron DDP's fp32 ``main_grad`` buffer (allocated before the baseline: it is
resident all run): today's weight gradient arrives in ``weight.grad`` and is added into it (DDP's hook), the
fused path adds into it tile by tile. Extra memory counts the step's temporaries and the gradient of the hidden
states (both variants produce it), in multiples of L (the logits bytes of one rank, which only today's path
holds). Final line: ``logprobs_fused: mem_ratio=<fused / today> time_ratio=<fused / today>`` (worst over TP).
Run: ``.venv/bin/python bench/logprobs.py --fused --vocab 151936 --tokens 8192 --hidden 2048``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

VARIANTS = ("ours", "megatron", "naive")
FUSED_VARIANTS = ("fused", "today")


def _proc_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]


def _worker(args: argparse.Namespace) -> dict:
    if getattr(args, "fused", False):
        return _fused_worker(args)
    import torch

    torch.set_num_threads(args.threads)
    from rlad_megatron import parallel

    parallel.init_distributed(timeout_s=600)
    parallel.initialize_model_parallel(args.tp, 1)
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    from rlad_megatron.logprobs import vocab_parallel_token_logprobs

    tp, rank = args.tp, ps.get_tensor_model_parallel_rank()
    group = ps.get_tensor_model_parallel_group() if tp > 1 else None
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(1000 + rank)
    local_v = args.vocab // tp
    logits = (3 * torch.randn(args.tokens, local_v, generator=gen)).to(dtype)
    gen.manual_seed(7)  # targets and upstream gradient are the same on every rank
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    g_out = torch.randn(args.tokens, generator=gen)

    def step(variant: str, x: torch.Tensor, t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if variant == "ours":
            lp = vocab_parallel_token_logprobs(x, t, tp_group=group)
        elif variant == "megatron":
            lp = -tensor_parallel.vocab_parallel_cross_entropy(x.unsqueeze(1), t.unsqueeze(1)).squeeze(1)
        else:
            full = tensor_parallel.gather_from_tensor_model_parallel_region(x) if tp > 1 else x
            lp = torch.log_softmax(full.float(), dim=-1).gather(-1, t.unsqueeze(-1)).squeeze(-1)
        (lp * g).sum().backward()
        return lp.detach()

    def warm(variant: str) -> torch.Tensor:
        x = logits[:64].clone().requires_grad_()
        return step(variant, x, targets[:64], g_out[:64])

    out: dict = {"L_bytes": logits.numel() * logits.element_size()}
    if args.mode == "mem":
        warm(args.variant)
        x = logits.requires_grad_()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_kb("VmRSS")
        step(args.variant, x, targets, g_out)
        out["extra_bytes"] = (_proc_kb("VmHWM") - base) * 1024
        return out
    # time mode: all variants interleaved, plus a correctness cross-check on the warm-up slice
    ref = warm("ours")
    for v in args.variants:
        diff = (warm(v) - ref).abs().max().item()
        if diff > 1e-4:
            raise RuntimeError(f"variant {v} disagrees with ours by {diff} on the warm-up slice")
    x = logits.requires_grad_()
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for r in range(args.rounds + 1):
        for v in args.variants:
            x.grad = None
            dist.barrier()
            t0 = time.perf_counter()
            step(v, x, targets, g_out)
            dist.barrier()
            if r > 0:  # round 0 warms up at full size
                times[v].append(time.perf_counter() - t0)
    out["median_s"] = {v: statistics.median(ts) for v, ts in times.items()}
    return out


def _fused_worker(args: argparse.Namespace) -> dict:
    """``--fused``: one (variant, TP) memory measurement, or the two variants timed interleaved."""
    import torch

    torch.set_num_threads(args.threads)
    from rlad_megatron import parallel

    parallel.init_distributed(timeout_s=1800)
    parallel.initialize_model_parallel(args.tp, 1)
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.layers import linear_with_grad_accumulation_and_async_allreduce

    from rlad_megatron.logprobs import fused_token_logprobs, vocab_parallel_token_logprobs

    tp, rank = args.tp, ps.get_tensor_model_parallel_rank()
    group = ps.get_tensor_model_parallel_group() if tp > 1 else None
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(7)  # hidden states, targets, upstream gradient: the same on every rank
    hidden = torch.randn(args.tokens, args.hidden, generator=gen).to(dtype)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    g_out = torch.randn(args.tokens, generator=gen)
    gen.manual_seed(1000 + rank)
    weight = (torch.randn(args.vocab // tp, args.hidden, generator=gen) / args.hidden ** 0.5).to(dtype)
    weight.requires_grad_()
    weight.main_grad = torch.zeros(weight.shape, dtype=torch.float32)  # DDP's buffer: resident all run

    def step(variant: str, n: int | None = None) -> torch.Tensor:
        h = (hidden if n is None else hidden[:n]).detach().requires_grad_()
        t, g = (targets, g_out) if n is None else (targets[:n], g_out[:n])
        if variant == "fused":
            lp = fused_token_logprobs(h, weight, t, tp_group=group, accumulate_grad_into_main_grad=True)
        else:
            logits = linear_with_grad_accumulation_and_async_allreduce(
                h, weight, None, gradient_accumulation_fusion=False, allreduce_dgrad=tp > 1,
                sequence_parallel=False, tp_group=group)
            lp = vocab_parallel_token_logprobs(logits, t, tp_group=group)
        (lp * g).sum().backward()
        if weight.grad is not None:  # Megatron DDP's hook: into the buffer, then dropped
            weight.main_grad.add_(weight.grad)
            weight.grad = None
        return lp.detach()

    out: dict = {"L_bytes": args.tokens * (args.vocab // tp) * (2 if args.dtype == "bf16" else 4)}
    if args.mode == "mem":
        step(args.variant, 64)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_kb("VmRSS")
        step(args.variant)
        out["extra_bytes"] = (_proc_kb("VmHWM") - base) * 1024
        return out
    ref = step("today", 64)
    diff = (step("fused", 64) - ref).abs().max().item()
    if diff > (1e-4 if args.dtype == "fp32" else 5e-2):
        raise RuntimeError(f"fused disagrees with today's path by {diff} on the warm-up slice")
    times: dict[str, list[float]] = {v: [] for v in FUSED_VARIANTS}
    for r in range(args.rounds):
        for v in (FUSED_VARIANTS if r % 2 == 0 else FUSED_VARIANTS[::-1]):
            dist.barrier()
            t0 = time.perf_counter()
            step(v)
            dist.barrier()
            times[v].append(time.perf_counter() - t0)
    out["median_s"] = {v: statistics.median(ts) for v, ts in times.items()}
    return out


def _launch(args: argparse.Namespace, **override: object) -> list[dict]:
    from rlad_megatron.parallel import free_port

    spec = {**vars(args), **override}
    port = free_port()
    procs = []
    for rank in range(int(spec["tp"])):  # type: ignore[arg-type]
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(spec["tp"]), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(spec["threads"]))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for rank, p in enumerate(procs):
        stdout, stderr = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"rank {rank} of {override} failed ({p.returncode}):\n{stderr[-3000:]}")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--tp", default="1,2", help="comma-separated TP sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (see the docstring)")
    parser.add_argument("--fused", action="store_true",
                        help="the fused output layer + log-probs against today's output layer + kernel")
    parser.add_argument("--hidden", type=int, default=2048, help="--fused: hidden size")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        ns = argparse.Namespace(**json.loads(args.worker))
        print(json.dumps(_worker(ns)), flush=True)
        os._exit(0)  # skip gloo teardown at exit
    if args.fused:
        _main_fused(args)
        return

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: unknown {v!r}; choose from {VARIANTS}")
    if "megatron" not in variants or "ours" not in variants:
        raise SystemExit("--variants must include ours and megatron (the final line compares them)")
    base = {"tokens": args.tokens, "vocab": args.vocab, "dtype": args.dtype, "rounds": args.rounds,
            "threads": args.threads}
    elem = 2 if args.dtype == "bf16" else 4
    mem_ratio: list[float] = []
    time_ratio: list[float] = []
    print(f"logprobs bench: {args.tokens} tokens x {args.vocab} vocab, {args.dtype}, {args.threads} thread(s) per "
          f"rank, load average {os.getloadavg()[0]:.1f}; L = logits bytes per rank")
    for tp in [int(s) for s in args.tp.split(",")]:
        if args.vocab % tp:
            raise SystemExit(f"--vocab {args.vocab} is not divisible by TP {tp}")
        ns = argparse.Namespace(**base, tp=tp, variants=[], mode="mem", variant="")
        run_variants = []
        mem: dict[str, float] = {}
        for v in variants:
            # naive at TP>1 holds the gathered vocabulary on every rank: ~8 full-size L per rank at worst
            need = (8 * tp if v == "naive" else 5) * args.tokens * args.vocab // tp * elem * tp
            if need > _available_bytes():
                print(f"  TP={tp} {v:9s} skipped: needs ~{need / 2**30:.1f} GiB, "
                      f"{_available_bytes() / 2**30:.1f} GiB available")
                continue
            res = _launch(ns, mode="mem", variant=v)
            mem[v] = max(r["extra_bytes"] / r["L_bytes"] for r in res)
            run_variants.append(v)
        # ours and megatron interleaved in one process group; naive (the memory hog) in its own
        timing = _launch(ns, mode="time", variants=[v for v in run_variants if v != "naive"])[0]["median_s"]
        if "naive" in run_variants:
            timing.update(_launch(ns, mode="time", variants=["naive"])[0]["median_s"])
        for v in run_variants:
            print(f"  TP={tp} {v:9s} peak extra memory {mem[v]:5.2f} L   fwd+bwd {timing[v] * 1e3:8.1f} ms")
        mem_ratio.append(mem["ours"] / mem["megatron"])
        time_ratio.append(timing["ours"] / timing["megatron"])
    print(f"logprobs: ours_mem_ratio_vs_megatron={max(mem_ratio):.3f} "
          f"ours_time_ratio_vs_megatron={max(time_ratio):.3f}")


def _main_fused(args: argparse.Namespace) -> None:
    base = {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "dtype": args.dtype,
            "rounds": args.rounds, "threads": args.threads, "fused": True}
    mem_ratio: list[float] = []
    time_ratio: list[float] = []
    print(f"logprobs bench (fused): {args.tokens} tokens x {args.vocab} vocab, hidden {args.hidden}, {args.dtype}, "
          f"{args.threads} thread(s) per rank, load average {os.getloadavg()[0]:.1f}; L = logits bytes per rank")
    for tp in [int(s) for s in args.tp.split(",")]:
        if args.vocab % tp:
            raise SystemExit(f"--vocab {args.vocab} is not divisible by TP {tp}")
        ns = argparse.Namespace(**base, tp=tp, mode="mem", variant="")
        mem = {v: max(r["extra_bytes"] / r["L_bytes"] for r in _launch(ns, mode="mem", variant=v))
               for v in FUSED_VARIANTS}
        timing = _launch(ns, mode="time")[0]["median_s"]
        for v in FUSED_VARIANTS:
            print(f"  TP={tp} {v:6s} peak extra memory {mem[v]:6.3f} L   fwd+bwd {timing[v] * 1e3:9.1f} ms")
        mem_ratio.append(mem["fused"] / mem["today"])
        time_ratio.append(timing["fused"] / timing["today"])
    print(f"logprobs_fused: mem_ratio={max(mem_ratio):.3f} time_ratio={max(time_ratio):.3f}")


if __name__ == "__main__":
    main()
