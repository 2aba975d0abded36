"""The quickstart recipe's NeMo-Run settings for the end-to-end tests (a test helper; the library never imports it).
The shared runs themselves are fixtures in tests/e2e/conftest.py."""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

QUICKSTART_STEPS = 3


@contextlib.contextmanager
def nemo_run_local_env(home: Path) -> Iterator[None]:
    """NeMo-Run pointed at a private home for the duration of a launch (restored after, so this nests inside a
    module's own NeMo-Run settings without leaking into them)."""
    import nemo_run.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nemo_run.config, "_NEMORUN_HOME", str(home))
        mp.setattr("sys.stdin", io.StringIO())  # NeMo-Run's `invoke` reads stdin; pytest refuses reads
        # torchx finds `torchrun` (and `python`) on PATH: use the ones of this interpreter's environment.
        mp.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        yield
