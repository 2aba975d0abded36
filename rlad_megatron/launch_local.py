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

A launch whose ranks refuse their input (exit code 2, :mod:`rlad_megatron.refusal`: global rank 0 has printed the
message) ends with exit code 2 and nothing more on the console: torchrun's own report of the failure (its
``ChildFailedError`` with the launcher's traceback, and its log lines about stopping the other ranks) is left out.
torchrun treats every non-zero exit code as a failure (``torch.distributed.elastic``'s agent stops the other ranks
and ``torch.distributed.run`` raises ``ChildFailedError``); only its caller can tell a refusal from a crash. Any
other failure is reported by torchrun as before. ``OMP_NUM_THREADS`` defaults to 1 for several ranks, as torchrun
sets it, without torchrun's banner saying so.

Multi-node jobs use NeMo-Run's torchrun launcher (recipes/executors.py), whose stores must listen on the network.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Sequence

from rlad_megatron.loopback import loopback_interface
from rlad_megatron.refusal import ENV_SAID, EXIT_CODE

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
    if options.nproc_per_node > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks, without its banner
    # lazy: torchrun's own modules only when launching
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    held = _HoldStopLines()
    stopping = logging.getLogger(_PROCESS_LOGGER)
    stopping.addFilter(held)
    try:
        with tempfile.TemporaryDirectory(prefix="rlad-rdzv-") as folder:
            os.environ[ENV_SAID] = str(Path(folder) / "refusals")
            torchrun([*torchrun_args(options.nproc_per_node, Path(folder) / "rendezvous",
                                     max_restarts=options.max_restarts), *argv[split:]])
    except ChildFailedError as err:
        if refused(err.failures):
            return EXIT_CODE  # rank 0 said why; torchrun's report would only repeat that a rank exited with 2
        held.release()
        raise
    finally:
        held.release()
        stopping.removeFilter(held)
    return 0


_PROCESS_LOGGER = "torch.distributed.elastic.multiprocessing.api"
"""The logger of torchrun's lines about its ranks' processes (stopping them, the first failure)."""
_STOP_SIGNALS = (-signal.SIGTERM, -signal.SIGKILL)


def refused(failures: dict[int, Any]) -> bool:
    """Whether the failed ranks of a launch (torchrun's ``ChildFailedError.failures``: rank -> failure with an
    ``exitcode``) refused their input: some exited with :data:`EXIT_CODE`, the others too or were stopped by
    torchrun (SIGTERM, then SIGKILL)."""
    codes = [f.exitcode for f in failures.values()]
    return EXIT_CODE in codes and all(c == EXIT_CODE or c in _STOP_SIGNALS for c in codes)


class _HoldStopLines(logging.Filter):
    """Holds torchrun's "Sending process <pid> closing signal SIGTERM" lines until it logs why the ranks stop:
    dropped together with "failed (exitcode: 2)" (a refusal, already said by rank 0), released before any other
    line (a crash, Ctrl-C) and at the end of the launch."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "rlad_released", False):
            return True
        if str(record.msg).startswith("Sending process"):
            self.held.append(record)
            return False
        if str(record.msg).startswith("failed (exitcode") and record.args and record.args[0] == EXIT_CODE:
            self.held.clear()
            return False
        self.release()
        return True

    def release(self) -> None:
        held, self.held = self.held, []
        for record in held:
            record.rlad_released = True
            logging.getLogger(record.name).handle(record)


if __name__ == "__main__":
    sys.exit(main())
