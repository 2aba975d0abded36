"""torchrun for a job on this machine whose every socket listens on the loopback interface only.

    python -m rlad_megatron.launch_local --nproc-per-node 2 [--max-restarts N] -m rlad_megatron.cli train ...
    cmd = command(2, "rlad_megatron.cli", ["train", "--config", "run.yaml"])      # the same, as an argv list

``torchrun --standalone`` (and NeMo-Run's local torchrun launcher) host the rendezvous store and the ranks' store on
every network interface (``::``): two ports anyone on the network can reach for as long as the job runs. This runs
torchrun's own agent (``torch.distributed.run``) with:

- the rendezvous on a file store in a private temporary folder (``--rdzv-backend c10d --rdzv-conf
  store_type=file``): no socket at all;
- ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: the agent hosts no store for the ranks; global rank 0 hosts it
  (:func:`rlad_megatron.parallel.init_distributed`) on ``MASTER_ADDR=127.0.0.1`` (``--local-addr``), bound to the
  loopback address, and points gloo at the loopback interface (:mod:`rlad_megatron.loopback`);
- a fresh rendezvous id, so that ``--max-restarts`` restarts are told apart (each restart is a new round).

Multi-node jobs use NeMo-Run's torchrun launcher (recipes/executors.py), whose stores must listen on the network.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Sequence

from rlad_megatron.loopback import loopback_interface

MODULE = "rlad_megatron.launch_local"


def command(nproc: int, module: str, args: Sequence[str] = (), *, max_restarts: int = 0,
            python: str = sys.executable) -> list[str]:
    """The argv running ``python -m <module> <args>`` on ``nproc`` local ranks through this launcher."""
    options = [f"--nproc-per-node={nproc}"] + ([f"--max-restarts={max_restarts}"] if max_restarts else [])
    return [python, "-m", MODULE, *options, "-m", module, *args]


def torchrun_args(nproc: int, rendezvous_file: Path, *, max_restarts: int = 0) -> list[str]:
    """torchrun's options for a loopback-only job on this machine (the rendezvous in ``rendezvous_file``)."""
    return ["--nnodes=1", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous_file}", "--rdzv-conf=store_type=file", f"--rdzv-id={uuid.uuid4().hex}",
            "--local-addr=127.0.0.1"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0],
                                     usage=f"python -m {MODULE} --nproc-per-node N [--max-restarts N] -m MODULE ...")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="ranks on this machine")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="torchrun restarts every rank up to N times after one fails")
    if "-m" not in argv:
        parser.error("give the program as -m MODULE [ARGS...]")
    split = argv.index("-m")
    options = parser.parse_args(argv[:split])
    if options.nproc_per_node < 1 or options.max_restarts < 0:
        parser.error("--nproc-per-node must be >= 1 and --max-restarts >= 0")

    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    # lazy: torchrun's own module only when launching
    from torch.distributed.run import main as torchrun

    with tempfile.TemporaryDirectory(prefix="rlad-rdzv-") as folder:
        torchrun([*torchrun_args(options.nproc_per_node, Path(folder) / "rendezvous",
                                 max_restarts=options.max_restarts), *argv[split:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
