"""``rlad-megatron teacher-trust`` end to end: a tiny Llama warm-started on 1-digit additions (so that it is right
on some samples and wrong on others) as the teacher, the real vLLM engine, the task's verifier; the copy of the
training file carries each prompt's pass rate, equal to the evaluation's per-prompt counts, and the data loader
reads it back. One engine start."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # one engine start + 60 CPU SFT steps


def test_teacher_trust_writes_per_prompt_pass_rates(tmp_path, capsys) -> None:
    from transformers import AutoTokenizer

    from rlad_megatron.cli import main
    from rlad_megatron.data.prompt_dataset import TEACHER_PASS_RATE, load_prompt_dataset
    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.testing.tiny_run import prepare_models_and_data, warm_start

    paths = prepare_models_and_data(tmp_path / "models", num_prompts=16)
    teacher = warm_start(paths["student"], str(tmp_path / "teacher_warm"), paths["train"], steps=60)
    out = tmp_path / "trust" / "train_trust.jsonl"
    k = 4
    rc = main(["teacher-trust", "--teacher", teacher, "--task", "arithmetic", "--data", paths["train"], "--k", str(k),
               "--out", str(out), "--max-tokens", "24", "--max-prompt-tokens", "32",
               "--engine-option", f"kv_cache_bytes={32 << 20}"])
    console = capsys.readouterr().out
    assert rc == 0, console
    assert "16 of 16 rows rated" in console

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    source = [json.loads(line) for line in Path(paths["train"]).read_text().splitlines()]
    assert [{k_: v for k_, v in r.items() if k_ != TEACHER_PASS_RATE} for r in rows] == source
    report = json.loads((tmp_path / "trust" / "train_trust_report" / "eval.json").read_text())
    counts = {p["id"]: p["correct"] / p["n"] for p in report["per_prompt"]}
    assert report["k"] == k and report["sampling"]["temperature"] == 1.0
    assert {r["id"]: r[TEACHER_PASS_RATE] for r in rows} == counts
    rates = sorted(counts.values())
    assert set(rates) <= {0.0, 0.25, 0.5, 0.75, 1.0} and rates[-1] > 0.0  # the warm model is right sometimes
    summary = json.loads((tmp_path / "trust" / "train_trust_report" / "teacher_trust.json").read_text())
    assert summary["rated"] == 16 and summary["mean_pass_rate"] == pytest.approx(sum(rates) / 16)

    tok = AutoTokenizer.from_pretrained(teacher)
    dataset = load_prompt_dataset(str(out), get_task("arithmetic"), tok, max_prompt_tokens=32)
    assert {e.id: e.record[TEACHER_PASS_RATE] for e in dataset.examples} == counts
