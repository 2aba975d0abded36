"""Time ``run_distributed`` with ranks forked from the pre-imported server against fresh rank processes (the
baseline), interleaved in the same run so that both see the same machine load.

Each round runs a small body (the tiny test GPT at TP=2: parallel state, model build, one forward and its loss) on
2 ranks, once with fresh processes (``python -m rlad_megatron.testing._rank_main`` per rank) and once forked from
the server. The server's own start-up (once per pytest session) is timed separately and reported with the
number of runs it takes to pay for itself.

Final line: ``rank_startup: ratio_fresh_vs_forked=<x> server_start_s=<y>``.
Run: ``PYTHONPATH=$PWD .venv/bin/python bench/rank_startup.py [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import statistics
import time


def _body() -> float:
    import torch

    from rlad_megatron.testing.tiny_gpt import tiny_batch, tiny_config, tiny_gpt

    model = tiny_gpt(tiny_config())
    b = tiny_batch()
    with torch.no_grad():
        return float(model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from rlad_megatron.testing import fork_server
    from rlad_megatron.testing.distributed import run_distributed

    fork_server.enable()
    t = time.perf_counter()
    run_distributed(_body, 2, tp=2)  # starts the server (and checks the body runs)
    server_start = time.perf_counter() - t
    fresh, forked = [], []
    try:
        for _ in range(args.rounds):
            for times, enabled in ((fresh, False), (forked, True)):
                fork_server._enabled = enabled
                t = time.perf_counter()
                results = run_distributed(_body, 2, tp=2)
                times.append(time.perf_counter() - t)
                assert len(results) == 2 and results[0] == results[1]
    finally:
        fork_server.stop()
    ratios = [a / b for a, b in zip(fresh, forked)]
    print(f"fresh ranks  : median {statistics.median(fresh):.2f} s  ({', '.join(f'{x:.2f}' for x in fresh)})")
    print(f"forked ranks : median {statistics.median(forked):.2f} s  ({', '.join(f'{x:.2f}' for x in forked)})")
    print(f"first run (server start + forked run): {server_start:.2f} s; the server pays for itself after "
          f"{server_start / max(1e-9, statistics.median(fresh) - statistics.median(forked)):.1f} runs")
    print(f"rank_startup: ratio_fresh_vs_forked={statistics.median(ratios):.2f} server_start_s={server_start:.2f}")


if __name__ == "__main__":
    main()
