"""The multi-rank test harness leaves nothing behind: helper processes a rank spawns die with it."""
from __future__ import annotations

import os
import time

import pytest

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed


def _spawn_helper() -> int:
    # A sleeping child in the rank's session, like the multiprocessing Manager megatron's checkpoint writer
    # starts; the rank then leaves by os._exit (as every harness rank does), which never shuts it down.
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    return child.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited rank is reparented and reaped by init; until then it is a zombie.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_of_finished_ranks_are_killed() -> None:
    pids = run_distributed(_spawn_helper, world_size=2, timeout=120)
    assert len(pids) == 2 and all(isinstance(p, int) for p in pids)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), f"helper processes {pids} outlived their ranks"


_SCRIPT = '''
def body(x):
    return x + 1

if __name__ == "__main__":
    from rlad_megatron.testing.distributed import run_distributed
    print("results", run_distributed(body, 2, args=(1,), init_megatron=False, timeout=120))
'''


def test_body_defined_in_a_script_runs_once_per_rank(tmp_path) -> None:
    # A rank loads the body's module from its file; loaded as __main__, the script's own guarded
    # run_distributed call ran again in every rank, spawning ranks recursively (a fork bomb).
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "results [2, 2]" in out.stdout


def _nested_run() -> list:
    return run_distributed(_spawn_helper, world_size=1, timeout=60, init_megatron=False)


def test_nested_run_is_refused() -> None:
    from rlad_megatron.testing.distributed import DistributedRunError

    with pytest.raises(DistributedRunError, match="nested runs are not supported"):
        run_distributed(_nested_run, world_size=1, timeout=120, init_megatron=False)
