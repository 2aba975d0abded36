"""run_eval end to end: a tiny local Llama with the char tokenizer, the real vLLM engine, the demo task's test file;
then ``rlad-megatron eval`` as a user runs it: K&K and a GPQA-style multiple-choice set in one call (one engine, one
table, one results file), the console quiet (vLLM's messages in eval.log). A random model scores ~0; the checks are
on the pipeline (files, counts, decoding, the console)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlad_megatron.tasks.arithmetic.data import write_demo_data
from rlad_megatron.tasks.knights_knaves.task import generate_records as kk_records
from rlad_megatron.eval.runner import run_eval
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two engine starts: ~40 s idle, ~100 s on a busy 2-core box


def test_run_eval_demo_and_several_benchmarks_with_vllm(tmp_path) -> None:
    model = make_tiny_hf_model(tmp_path / "llama", family="llama", hidden_size=128, intermediate_size=256,
                               num_heads=4, num_kv_heads=2, seed=3, max_position_embeddings=2048)  # head_dim 32: vLLM CPU attention needs it
    paths = write_demo_data(str(tmp_path / "demo"), n_train=20, n_test=6, seed=0, max_digits=3)
    out = tmp_path / "eval"
    # The README's command gives no --max-tokens: on a model whose context (here 32 tokens) is shorter than the
    # default budget of 512, the budget shrinks to what the context leaves (vLLM refused the engine before).
    short = make_tiny_hf_model(tmp_path / "short", family="llama", hidden_size=128, intermediate_size=256,
                               num_heads=4, num_kv_heads=2, seed=3, max_position_embeddings=32)
    report = run_eval(str(short), "arithmetic", paths["test"], k=2, out_dir=str(out), max_prompt_tokens=16,
                      engine_options={"kv_cache_bytes": 32 << 20}, cache_dir=str(tmp_path / "hf"))
    assert report.overall.prompts == 6 and report.overall.samples == 12
    assert report.sampling["temperature"] == 0.6 and report.sampling["top_p"] == 0.95
    assert 0.0 <= report.overall.mean_at_k <= report.overall.pass_at[2] <= 1.0
    budget = report.sampling["max_tokens"]
    assert 0 < budget <= 32 - 5  # every demo prompt has more than 5 tokens
    assert 0 < report.overall.mean_response_tokens <= budget
    data = json.loads((out / "eval.json").read_text())
    assert data["data"]["kept"] == 6 and data["task"] == "arithmetic"
    assert "| all |" in (out / "eval.md").read_text()
    assert json.loads((out / "data_report.json").read_text())["rows"] == 6

    kk = tmp_path / "kk.jsonl"
    kk.write_text("".join(json.dumps(r) + "\n" for r in kk_records(1, seed=0, sizes=(2, 3))))
    mcq = tmp_path / "gpqa_style.jsonl"  # GPQA's own columns: the multiple_choice task shuffles the choices
    mcq.write_text("".join(json.dumps({
        "Record ID": f"r{i}", "Question": f"Which number is {i}?", "Correct Answer": str(i),
        "Incorrect Answer 1": str(i + 1), "Incorrect Answer 2": str(i + 2), "Incorrect Answer 3": str(i + 3),
        "High-level domain": "Toy"}) + "\n" for i in range(3)))
    out = tmp_path / "bench_eval"
    cmd = [sys.executable, "-m", "rlad_megatron.cli", "eval", "--model", str(model), "--k", "2", "--max-tokens", "8",
           "--data", f"kk={kk},mcq={mcq}", "--task", "kk=knights_knaves", "--task", "mcq=multiple_choice",
           "--max-prompt-tokens", "1500", "--engine-option", f"kv_cache_bytes={32 << 20}", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    suite = json.loads((out / "eval.json").read_text())
    kk_report, mc_report = suite["benchmarks"]["kk"], suite["benchmarks"]["mcq"]
    assert set(kk_report["by_difficulty"]) == {"ppl2", "ppl3"} and kk_report["overall"]["mean_at_k"] == 0.0
    assert mc_report["task"] == "multiple_choice" and mc_report["overall"]["prompts"] == 3
    assert set(mc_report["by_difficulty"]) == {"Toy"} and mc_report["overall"]["samples"] == 6
    # The console: our progress lines on stderr, the one table and the paths on stdout; vLLM's lines in eval.log.
    progress = done.stderr.strip().splitlines()
    assert len(progress) == 5 and all(line.startswith("[eval] ") for line in progress), done.stderr[-3000:]
    assert progress[2].startswith("[eval] starting the vLLM engine (float32, ")
    assert progress[3:] == ["[eval] kk: 2 prompts x 2 samples (knights_knaves)",
                            "[eval] mcq: 3 prompts x 2 samples (multiple_choice)"]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and table[0].startswith("| benchmark | task | prompts | Mean@n | Pass@1 | Pass@2 |")
    assert table[1].startswith("| kk | knights_knaves | 2 | 0.0000 |")
    assert table[2].startswith("| mcq | multiple_choice | 3 |")
    assert done.stdout.strip().endswith(f"(vLLM's messages: {out}/eval.log)")
    log = (out / "eval.log").read_text()
    assert " INFO " in log and " INFO " not in done.stdout + done.stderr
