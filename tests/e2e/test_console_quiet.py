"""A real tiny training run (torchrun, 2 ranks at TP=2, Megatron learner, colocated vLLM engine, teacher, periodic
evaluation): the console shows only our lines (the setup summary, the progress bar, the evaluation line, the curves
note); vLLM's INFO lines, Megatron's/torch's warnings and C++ log lines are in ``<output_dir>/train.log``. W&B
logging in offline mode is on, to check that only rank 0 logs and that W&B adds nothing to the console.

The run is test_trainer_layouts' TP=2 run (the session's, launched once: tests/e2e/layout_runs.py), which has W&B
on for this check; its evaluation is the one after its last step."""
from __future__ import annotations

import re

import pytest

from layout_runs import CONSOLE_LAYOUT, LAYOUTS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: Every line our trainer prints on the console (progress-bar frames are split at carriage returns).
OURS = (
    re.compile(r"^\[rlad\] "),                  # setup summary, resume notes
    re.compile(r"^train: "),                    # the tqdm bar (desc "train")
    re.compile(r"^step \d+: eval accuracy="),   # one line per evaluation
    re.compile(r"^curves: "),                   # where the plot, metrics and TensorBoard logs are
    re.compile(r"^wandb: \S+/wandb/(offline-)?run-"),   # our note: where the W&B run's files are (not W&B's own)
)
#: What third-party output looks like (to show what a failure let through, and to check the log has it).
THIRD_PARTY = re.compile(r"\bINFO\b|\bWARNING\b|Warning|^\[?[WIE]\d{4} |^\(EngineCore")


def test_console_shows_only_ours_and_train_log_has_the_rest(layout_runs) -> None:
    run = layout_runs[CONSOLE_LAYOUT]
    out = run.output_dir

    console = [line.strip() for line in re.split(r"[\r\n]", run.console) if line.strip()]
    foreign = [line for line in console if not any(p.match(line) for p in OURS)]
    assert not foreign, "third-party lines on the console:\n" + "\n".join(foreign[:40])
    last_step = LAYOUTS[CONSOLE_LAYOUT].steps
    assert any(line.startswith(f"step {last_step}: eval accuracy=") for line in console), console
    assert any(line.startswith("train: 100%") for line in console), console

    log = (out / "train.log").read_text(errors="replace")
    vllm_lines = [line for line in log.splitlines() if re.search(r"INFO \d\d-\d\d [\d:]+ \[[\w.]+\.py:\d+\]", line)]
    assert len(vllm_lines) >= 10 and all("rank0" in line for line in vllm_lines), log[:3000]  # tagged by rank
    assert re.search(r"rank1 (WARNING|INFO) ", log) or "rank1" in log  # the second rank writes there too
    assert len([line for line in log.splitlines() if THIRD_PARTY.search(line)]) >= 10, log[:3000]

    # W&B (offline, no account): one run, from global rank 0 only, with its files under the output dir.
    run_id = (out / "wandb_run_id").read_text().strip()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert [r.name.endswith(run_id) for r in runs] == [True], runs
    assert (runs[0] / f"run-{run_id}.wandb").stat().st_size > 1000
