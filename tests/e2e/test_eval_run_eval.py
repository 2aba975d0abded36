"""run_eval end to end: a tiny local Llama with the char tokenizer, the real vLLM engine, the demo task's test file,
K&K through the same command. A random model scores ~0; the checks are on the pipeline (files, counts, decoding)."""
from __future__ import annotations

import json

import pytest

from rlad_megatron.tasks.arithmetic.data import write_demo_data
from rlad_megatron.tasks.knights_knaves.task import generate_records as kk_records
from rlad_megatron.eval.runner import run_eval
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two engine starts: ~40 s idle, ~90 s on a busy 2-core box


def test_run_eval_demo_and_kk_with_vllm(tmp_path) -> None:
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
    rep = run_eval(str(model), "knights_knaves", str(kk), k=1, out_dir=str(tmp_path / "kk_eval"),
                   max_prompt_tokens=1500, max_tokens=8, engine_options={"kv_cache_bytes": 32 << 20},
                   cache_dir=str(tmp_path / "hf"))
    assert set(rep.by_difficulty) == {"ppl2", "ppl3"} and rep.overall.mean_at_k == 0.0
