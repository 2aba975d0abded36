"""Chat conventions of real checkpoints (issue 20), on tiny local replicas: Qwen3's thinking mode through
data.chat_template_kwargs, system messages of chat-format datasets, the stop tokens of every generation path
(eos, generation_config.json's eos list, the template's end of turn) and student/teacher turn agreement."""
from __future__ import annotations

import json
from typing import Any, Mapping

import pytest

from rlad_megatron.tasks.math.task import MathTask
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.data.rows import row_to_record
from rlad_megatron.tasks.base import Task
from rlad_megatron.models.stop_tokens import (
    check_turn_ends_agree, end_of_turn_token_id, generation_config_eos_ids, stop_token_ids,
)
from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.tiny.chat_models import (
    END_OF_TEXT, IM_END, LLAMA3_STYLE_TEMPLATE, build_qwen3_style_tokenizer, make_bigram_chat_model,
)

ROW = {"id": "p1", "prompt": "What is 2 + 3?", "answer": "5"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_thinking_mode_follows_chat_template_kwargs(tmp_path):
    tok = build_qwen3_style_tokenizer()
    data = _write(tmp_path / "d.jsonl", [ROW])
    on = load_prompt_dataset(data, MathTask(), tok, 512, cache_dir=str(tmp_path / "c"))[0]
    off = load_prompt_dataset(data, MathTask(), tok, 512, cache_dir=str(tmp_path / "c"),
                              chat_template_kwargs={"enable_thinking": False})[0]
    assert on.prompt_text.endswith("<|im_start|>assistant\n")
    assert off.prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert off.prompt_token_ids[:len(on.prompt_token_ids)] == on.prompt_token_ids
    assert tok.convert_tokens_to_ids("</think>") in off.prompt_token_ids
    assert tok.convert_tokens_to_ids("</think>") not in on.prompt_token_ids


def test_chat_dataset_keeps_its_system_message(tmp_path):
    row = {"prompt": [{"role": "system", "content": "You are a careful grader."},
                      {"role": "user", "content": "What is 2 + 3?"}],
           "reward_model": {"ground_truth": "5"}, "data_source": "toy", "extra_info": {"index": 3}}
    record = row_to_record(MathTask(), row, None, "r0")
    assert record["system"] == "You are a careful grader." and record["prompt"] == "What is 2 + 3?"
    tok = build_qwen3_style_tokenizer()
    text = MathTask().build_prompt(record, tok)
    assert text.startswith("<|im_start|>system\nYou are a careful grader.<|im_end|>\n<|im_start|>user\nWhat is")
    # A dataset without one: no system turn.
    plain = row_to_record(MathTask(), {**row, "prompt": row["prompt"][1:]}, None, "r1")
    assert "system" not in plain and "<|im_start|>system" not in MathTask().build_prompt(plain, tok)
    # Without a chat template the system text still leads the prompt.
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer

    assert MathTask().build_prompt(record, build_char_tokenizer()).startswith("You are a careful grader.\n\n")


def test_end_of_turn_and_stop_tokens_of_a_base_checkpoint(tmp_path):
    base = make_bigram_chat_model(tmp_path / "base", {}, base=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    im_end, eot = tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(END_OF_TEXT)
    assert tok.eos_token_id == eot and generation_config_eos_ids(base) == [eot]  # the template's turn end is in neither
    assert end_of_turn_token_id(tok) == im_end
    assert end_of_turn_token_id(tok, {"enable_thinking": False}) == im_end
    assert stop_token_ids(tok, [base]) == tuple(sorted({im_end, eot}))
    instruct = make_bigram_chat_model(tmp_path / "instruct", {})
    assert generation_config_eos_ids(instruct) == [im_end, eot]
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer

    plain = build_char_tokenizer()
    assert end_of_turn_token_id(plain) is None and stop_token_ids(plain) == (plain.eos_token_id,)
    llama = build_qwen3_style_tokenizer(template=LLAMA3_STYLE_TEMPLATE)
    assert end_of_turn_token_id(llama) == llama.convert_tokens_to_ids("<|eot_id|>")


def test_student_and_teacher_must_end_turns_alike(tmp_path):
    qwen_base, qwen_instruct = build_qwen3_style_tokenizer(base=True), build_qwen3_style_tokenizer()
    check_turn_ends_agree(qwen_base, qwen_instruct)  # Qwen3 base student, instruct teacher: both end with <|im_end|>
    llama = build_qwen3_style_tokenizer(template=LLAMA3_STYLE_TEMPLATE)
    with pytest.raises(ValueError, match=r"'<\|im_end\|>'.*'<\|eot_id\|>'"):
        check_turn_ends_agree(qwen_instruct, llama, student="s_dir", teacher="t_dir")
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer

    with pytest.raises(ValueError, match="no end-of-turn token"):
        check_turn_ends_agree(qwen_instruct, build_char_tokenizer())


def test_tokenizer_check_accepts_base_student_with_instruct_teacher(tmp_path):
    from rlad_megatron.models.teacher import TokenizerMismatchError, check_tokenizer_compatible

    base = make_bigram_chat_model(tmp_path / "base", {}, base=True)
    instruct = make_bigram_chat_model(tmp_path / "instruct", {})
    check_tokenizer_compatible(base, instruct)  # eos differs (<|endoftext|> vs <|im_end|>), turns end alike
    llama = make_bigram_chat_model(tmp_path / "llama", {}, template=LLAMA3_STYLE_TEMPLATE)
    with pytest.raises(TokenizerMismatchError, match="eos_token"):
        check_tokenizer_compatible(base, llama)  # different eos and a different turn format


class _ExactTask(Task):
    name = "exact"

    def user_message(self, record: Mapping[str, Any]) -> str:
        return record["prompt"]

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        ok = completion.strip() == record["answer"]
        return RewardResult(float(ok), ok, True)


def test_transformers_generation_stops_at_the_templates_end_of_turn(tmp_path):
    """The non-vLLM path (examples' generate_accuracy): a base checkpoint answers "5", ends its turn and would go
    on with "xxx" if only its eos stopped it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tiny.sft import generate_accuracy

    path = make_bigram_chat_model(tmp_path / "base", {"\n": "5", "5": IM_END, IM_END: "x", "x": "x"}, base=True)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    report = generate_accuracy(model, tok, _ExactTask(), [ROW], max_new_tokens=8)
    assert report.accuracy == 1.0 and report.mean_response_tokens == 1.0


def test_sft_targets_end_with_the_turn_end():
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer
    from rlad_megatron.tasks.arithmetic.task import ArithmeticTask
    from rlad_megatron.tiny.sft import sft_example

    record = {"id": "a", "prompt": "1+2=", "answer": "3"}
    base = build_qwen3_style_tokenizer(base=True)
    assert sft_example(ArithmeticTask(), record, base)[1][-1] == base.convert_tokens_to_ids(IM_END)
    plain = build_char_tokenizer()
    assert sft_example(ArithmeticTask(), record, plain)[1][-1] == plain.eos_token_id
