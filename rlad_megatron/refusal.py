"""A command that refuses its input before the work starts: the message once on the console, exit code 2, also
when every rank of a torchrun launch refuses.

    return refuse(["data.train_files: data file or folder not found: a.jsonl"], command="rlad-megatron train")

Every rank of a launch runs the same checks on the same files and reaches the same verdict. Global rank 0 (or a
process outside torchrun) prints the lines and returns :data:`EXIT_CODE`. The other ranks print nothing and wait
for the launcher to stop them: torchrun stops every rank as soon as one exits with an error, so the console shows
the message once -- and never loses it, as it would if another rank exited first and torchrun stopped rank 0 before
it had printed. A rank that is still running after :data:`WAIT_S` seconds saw a problem rank 0 did not (a file
missing on its node only): the first rank of its node then prints the lines, naming its rank and host, and every
such rank returns :data:`EXIT_CODE`.

``python -m rlad_megatron.launch_local`` then ends with exit code 2 and adds nothing (a rank's exit code 2 means its
input was refused and said so); plain ``torchrun`` adds its own failure report after the message. Under
``launch_local --max-restarts N`` torchrun starts the ranks again after a refusal; a line said by an earlier attempt
is not said again (the launcher names a file for them in ``RLAD_REFUSALS_FILE``).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Iterable

from rlad_megatron.console import console_stream

EXIT_CODE = 2
"""What a refused command exits with (argparse's usage errors too)."""
WAIT_S = 30.0
"""How long a rank other than 0 waits for torchrun to stop it before printing the refusal itself."""
ENV_SAID = "RLAD_REFUSALS_FILE"
"""Set by the launcher: the file of lines already said by the earlier attempts of a launch."""


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def refuse(lines: Iterable[str], *, command: str, wait_s: float | None = None) -> int:
    """Print each of ``lines`` as ``<command>: <line>`` on the terminal's stderr from global rank 0, once (see the
    module); returns :data:`EXIT_CODE` for the caller to exit with."""
    lines = list(lines)
    rank = _rank()
    if rank == 0:
        _print(lines, command)
        return EXIT_CODE
    time.sleep(WAIT_S if wait_s is None else wait_s)  # torchrun stops this rank when rank 0 has refused too
    if os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        _print(lines, f"{command} (rank {rank} on {socket.gethostname()})")
    return EXIT_CODE


def _print(lines: list[str], command: str) -> None:
    texts = [f"{command}: {line}" for line in lines]
    said = os.environ.get(ENV_SAID)
    if said:  # a restart of the launch: say only what its earlier attempts did not
        key = [" ".join(t.split()) for t in texts]
        try:
            with open(said, "a+", encoding="utf-8") as f:
                f.seek(0)
                before = set(f.read().splitlines())
                f.write("".join(k + "\n" for k in key if k not in before))
        except OSError:
            before = set()
        texts = [t for t, k in zip(texts, key) if k not in before]
    stream = console_stream()  # the terminal, also once the process's output goes to the run's log
    for text in texts:
        stream.write(text + "\n")
    stream.flush()
