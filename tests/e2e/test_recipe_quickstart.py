"""The quickstart recipe, launched for real through NeMo-Run's LocalExecutor: torchrun starts 2 CPU ranks that run
``python -m rlad_megatron.cli train <recipe overrides>`` (Megatron learner at TP=2 over gloo, colocated vLLM CPU
engine, tiny random Qwen3 student and teacher) for 2 steps; the experiment must succeed and leave 2 steps of
finite metrics, each with an applied policy update and a verified weight sync."""
from __future__ import annotations

import io
import json
import math
import os
import sys

import pytest

pytest.importorskip("nemo_run")
pytest.importorskip("vllm")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_quickstart_runs_through_local_executor(tmp_path, monkeypatch):
    import nemo_run.config

    from recipes import prepare_quickstart_assets, quickstart
    from recipes.executors import launch, local_executor

    monkeypatch.setattr(nemo_run.config, "_NEMORUN_HOME", str(tmp_path / "nemo_home"))
    monkeypatch.setattr("sys.stdin", io.StringIO())  # NeMo-Run's `invoke` reads stdin; pytest refuses reads
    # torchx finds `torchrun` on PATH: use the one of this interpreter's environment.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))

    assets = prepare_quickstart_assets(tmp_path / "assets", num_records=32)
    out = tmp_path / "run"
    recipe = quickstart(**assets, output_dir=str(out), steps=2)
    result = launch(recipe, local_executor(recipe), experiment_name="quickstart-e2e")

    status = result["status"]
    states = {task: str(info.get("status")) for task, info in status.items()}
    logs = sorted(p for p in (tmp_path / "nemo_home").rglob("*.log"))
    tail = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs if p.stat().st_size)[-8000:]
    assert states and all(s.upper().endswith("SUCCEEDED") for s in states.values()), f"{states}\n{tail}"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = sorted({row["step"] for row in rows})
    assert len(steps) == 2, rows
    for row in rows:  # every step ran the policy update through Megatron and synced the engine
        assert row["optim/applied_updates"] == 1.0, row
        assert any(key.startswith("loss/") for key in row), row
        assert row["sync/logprob_max_abs"] < 1e-3, row
    numbers = [v for row in rows for v in row.values() if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) for v in numbers)
