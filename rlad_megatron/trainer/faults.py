"""Named points of a training step where a fault-injection test can hold every rank, to SIGKILL them there.

    RLAD_FAULT_PAUSE=sync:3 RLAD_FAULT_DIR=/tmp/x torchrun ... train ...

A rank reaching point ``sync`` of step 3 writes ``/tmp/x/paused_rank<r>.pid`` and waits there until it is killed
(or, to inject a fault elsewhere first, until the test creates ``/tmp/x/release``). Off
(one environment lookup per point) unless the variable is set. Points: ``generation``, ``teacher``, ``train``,
``sync`` (inside a step; a rank blocked in a collective behind the engine rank never reaches them) and
``checkpoint`` (every rank, after a save's files are written and before its manifest and rename).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV_POINT = "RLAD_FAULT_PAUSE"
ENV_DIR = "RLAD_FAULT_DIR"
POINTS = ("generation", "teacher", "train", "sync", "checkpoint")


def pause_point(name: str, step: int) -> None:
    spec = os.environ.get(ENV_POINT)
    if not spec or spec != f"{name}:{step}":
        return
    rank = os.environ.get("RANK", "0")
    folder = Path(os.environ.get(ENV_DIR, "."))
    tmp = folder / f".paused_rank{rank}.pid"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, folder / f"paused_rank{rank}.pid")
    while not (folder / "release").exists():  # held here until the test kills this process (or releases it)
        time.sleep(0.2)
