"""The quickstart recipe, launched for real through NeMo-Run's LocalExecutor: torchrun starts 2 CPU ranks that run
``python -m rlad_megatron.cli train <recipe overrides>`` (Megatron learner at TP=2 over gloo, colocated vLLM CPU
engine, tiny random Qwen3 student and teacher) for 3 steps; the experiment must succeed and leave 3 steps of
finite metrics, each with an applied policy update and a verified weight sync.

Then the same run with ``--max-restarts 1`` (``trainer.resume=auto``): one rank is SIGKILLed after the first
checkpoint; torchrun restarts the ranks, the trainer resumes from that checkpoint, and the run ends with the same
per-step metrics as the uninterrupted one."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("nemo_run")
pytest.importorskip("vllm")

from quickstart_runs import QUICKSTART_STEPS, nemo_run_local_env  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEPS = QUICKSTART_STEPS
KEYS = ("reward/mean", "response/length_mean", "loss/loss", "optim/grad_norm")


@pytest.fixture(scope="module")
def nemo_env(tmp_path_factory):
    with nemo_run_local_env(tmp_path_factory.mktemp("nemo_home")):
        yield


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _logs(result: dict) -> str:
    return "\n".join(Path(p).read_text(errors="replace") for p in result["logs"])


def _check(result: dict, out: Path) -> list[dict]:
    states = [str(info.get("status")).upper().split(".")[-1] for info in result["status"].values()]
    assert states == ["SUCCEEDED"], f"{result['status']}\n{_logs(result)[-8000:]}"
    rows = _metrics(out)
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)), rows
    for row in rows:  # every step ran the policy update through Megatron and synced the engine
        assert row["optim/applied_updates"] == 1.0, row
        assert any(key.startswith("loss/") for key in row), row
        assert row["sync/logprob_max_abs"] < 1e-3, row
    numbers = [v for row in rows for v in row.values() if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) for v in numbers)
    return rows


def test_quickstart_runs_through_local_executor(quickstart_uninterrupted):
    _check(*quickstart_uninterrupted)


def _procs_with(text: str) -> list[tuple[int, str, int]]:
    """(pid, cmdline, parent pid) of this machine's processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if text in cmd:
            found.append((int(entry.name), cmd, ppid))
    return found


def _start_time(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(root: int) -> list[tuple[int, int | None]]:
    """(pid, start time) of every process below ``root`` (its helpers: megatron's checkpoint Manager, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append((pid, _start_time(pid)))
        todo.extend(children.get(pid, []))
    return found


def _rank_pid(out: Path, rank: int) -> int | None:
    """The training process of ``rank`` (a child of torchrun; forked helpers share its command line, not its parent)."""
    procs = _procs_with(f"trainer.output_dir={out}")
    agents = ("torch.distributed.run", "rlad_megatron.launch_local")  # torchrun, run by the loopback-only launcher
    torchruns = {pid for pid, cmd, _ in procs if any(a in cmd for a in agents)}
    for pid, cmd, ppid in procs:
        if ppid in torchruns and not any(a in cmd for a in agents):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return pid
    return None


def test_max_restarts_resumes_after_a_rank_is_killed(nemo_env, quickstart_assets, quickstart_recipe, tmp_path,
                                                     quickstart_uninterrupted):
    from recipes.executors import launch, local_executor, with_auto_resume

    reference = _metrics(quickstart_uninterrupted[1])
    out = tmp_path / "run"
    recipe = with_auto_resume(quickstart_recipe(quickstart_assets, out), "--max-restarts")
    done: dict = {}
    waiter = threading.Thread(target=lambda: done.update(
        launch(recipe, local_executor(recipe), experiment_name="quickstart-restart", max_restarts=1)))
    waiter.start()
    orphans: list[tuple[int, int | None]] = []
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoints" / "latest").exists():
            assert time.monotonic() < deadline and waiter.is_alive(), f"no checkpoint before the run ended: {done}"
            time.sleep(0.2)
        victim = _rank_pid(out, 1)
        assert victim, _procs_with(str(out))
        assert len(_metrics(out)) < STEPS, "the run finished before a rank could be killed"
        orphans = _descendants(victim)  # a SIGKILLed rank cannot stop its helper processes: the test does
        os.kill(victim, signal.SIGKILL)
        waiter.join(timeout=900)
        assert not waiter.is_alive(), "the restarted run did not finish"
    finally:
        waiter.join(timeout=1)
        # Nothing of this run may outlive the test (checked by start time, so a reused PID is left alone).
        leftovers = [(pid, _start_time(pid)) for pid, _, _ in _procs_with(f"trainer.output_dir={out}")]
        for pid, started in orphans + leftovers:
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    got = _check(done, out)
    text = _logs(done)
    assert "resumed from" in text and "at step 1" in text, text[-6000:]
    for ref, val in zip(reference, got):
        for key in KEYS:
            assert val[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), f"step {ref['step']} {key}"
