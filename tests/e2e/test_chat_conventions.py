"""Issue 20 end to end with the real vLLM engine and the real trainer, on a tiny Qwen3-style *base* checkpoint:
its generation config lists only <|endoftext|>, its chat template ends turns with <|im_end|>. A scripted (bigram)
model answers "\\boxed{5}", ends its turn, and would then go on writing "zzz..." if only its eos stopped it."""
from __future__ import annotations

import json

import pytest
import torch

from rlad_megatron.tiny.chat_models import IM_END, make_bigram_chat_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ANSWER = "\\boxed{5}"
ROWS = [{"id": f"q{i}", "prompt": f"What is {i} + {5 - i}?", "answer": "5"} for i in range(4)]


def _script() -> dict[str, str]:
    chain = ["\n", *ANSWER, IM_END, "z"]
    table = dict(zip(chain, chain[1:]))
    table["z"] = "z"
    return table


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    return make_bigram_chat_model(tmp_path_factory.mktemp("base") / "model", _script(), base=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def test_vllm_stops_at_the_end_of_turn_and_keeps_it_for_the_loss(base_model):
    from transformers import AutoTokenizer

    from rlad_megatron.learner.sequences import pack_sequences
    from rlad_megatron.models.stop_tokens import stop_token_ids
    from rlad_megatron.engine_api import SamplingSettings
    from rlad_megatron.config.engine import VLLMEngineConfig
    from rlad_megatron.rollout.vllm_engine import VLLMEngine

    tok = AutoTokenizer.from_pretrained(base_model)
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                         add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids(IM_END)
    engine = VLLMEngine(VLLMEngineConfig(model=str(base_model), max_model_len=128, kv_cache_bytes=32 << 20))
    try:
        eos_only = SamplingSettings(n=2, temperature=1.0, max_tokens=20, stop_token_ids=(tok.eos_token_id,), seed=1)
        (before,) = engine.generate([prompt], eos_only)
        stops = stop_token_ids(tok, [base_model])
        (after,) = engine.generate([prompt], SamplingSettings(n=2, temperature=1.0, max_tokens=20,
                                                              stop_token_ids=stops, seed=1))
    finally:
        engine.shutdown()
    for c in before.completions:  # what version one did: past the end of the turn, cut at the budget
        assert c.truncated and len(c.token_ids) == 20 and "zzz" in c.text
    for c in after.completions:
        assert c.finish_reason == "stop" and c.text == ANSWER
        assert c.token_ids[-1] == im_end and len(c.token_ids) == len(ANSWER) + 1
    c = after.completions[0]
    tokens, mask, _ = pack_sequences([prompt], [c.token_ids], [c.logprobs], pad_id=0, pad_to_multiple=1)
    last_target = int(mask[0].nonzero().max()) + 1
    assert int(tokens[0, last_target]) == im_end  # the turn end is the last token the loss trains on


def test_run_eval_with_thinking_off_and_the_template_stop(base_model, data, tmp_path):
    from rlad_megatron.eval.runner import run_eval

    kw = dict(k=2, max_prompt_tokens=128, max_tokens=24, engine_options={"kv_cache_bytes": 32 << 20},
              cache_dir=str(tmp_path / "hf"))
    report = run_eval(str(base_model), "math", data, out_dir=str(tmp_path / "off"),
                      chat_template_kwargs={"enable_thinking": False}, **kw)
    assert report.overall.truncated_rate == 0.0 and report.overall.mean_at_k == 1.0
    assert report.overall.mean_response_tokens == len(ANSWER) + 1
    on = json.loads((tmp_path / "off" / "data_report.json").read_text())["max_prompt_tokens_seen"]
    run_eval(str(base_model), "math", data, out_dir=str(tmp_path / "on"), **kw)
    off_len = json.loads((tmp_path / "on" / "data_report.json").read_text())["max_prompt_tokens_seen"]
    assert on - off_len == 6  # <think> \n \n </think> \n \n: the non-thinking generation prompt


def test_training_run_scores_finished_turns_and_exports_fp32(base_model, data, tmp_path):
    from rlad_megatron.testing.tiny_run import launch, read_metrics

    teacher = make_bigram_chat_model(tmp_path / "teacher", _script())  # instruct-style: eos <|im_end|>
    config = {
        "model": {"student": str(base_model), "teacher": str(teacher)},
        "data": {"task": "math", "train_files": [data], "eval_files": [data], "prompts_per_step": 2,
                 "max_prompt_tokens": 128, "chat_template_kwargs": {"enable_thinking": False}},
        "rollout": {"group_size": 2, "max_new_tokens": 24, "kv_cache_mb": 32},
        "optim": {"lr": 1e-4},
        "trainer": {"steps": 1, "micro_batch_size": 4, "output_dir": str(tmp_path / "out"), "seed": 3,
                    "eval_samples": 1},
        "loss": {"algorithm": "rlad"},
    }
    done = launch(config, 1, workdir=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    (step,) = read_metrics(tmp_path / "out")
    assert step["response/truncated_fraction"] == 0.0
    assert step["response/length_mean"] == len(ANSWER) + 1
    assert step["reward/accuracy"] == 1.0 and step["eval/accuracy"] == 1.0
    exported = json.loads((tmp_path / "out" / "hf" / "config.json").read_text())
    assert exported["dtype"] == "float32"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "out" / "hf" / "model.safetensors").values()} == {torch.float32}


def test_training_refuses_a_teacher_that_ends_turns_differently(base_model, data, tmp_path):
    from rlad_megatron.testing.tiny_run import launch
    from rlad_megatron.tiny.chat_models import LLAMA3_STYLE_TEMPLATE

    teacher = make_bigram_chat_model(tmp_path / "llama_teacher", _script(), template=LLAMA3_STYLE_TEMPLATE)
    config = {
        "model": {"student": str(base_model), "teacher": str(teacher)},
        "data": {"task": "math", "train_files": [data], "prompts_per_step": 2, "max_prompt_tokens": 128},
        "rollout": {"group_size": 2, "max_new_tokens": 24, "kv_cache_mb": 32},
        "trainer": {"steps": 1, "micro_batch_size": 4, "output_dir": str(tmp_path / "out")},
        "loss": {"algorithm": "rlad"},
    }
    done = launch(config, 1, workdir=tmp_path, timeout=300)
    assert done.returncode != 0
    assert "ends an assistant turn with '<|im_end|>'" in done.stdout and "'<|eot_id|>'" in done.stdout
