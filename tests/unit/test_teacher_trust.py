"""teacher-trust without an engine: pass rates from an evaluation over a fake teacher, the copy of the data file with
``teacher_pass_rate`` per row (ids as the loader gives them), the loader carrying and checking the field, CLI errors."""
from __future__ import annotations

import json
from typing import Any, Sequence

import pytest

from rlad_megatron.cli import main
from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.data.prompt_dataset import TEACHER_PASS_RATE, DatasetError, load_prompt_dataset
from rlad_megatron.eval.evaluate import evaluate
from rlad_megatron.eval.teacher_trust import pass_rates, rows_with_pass_rates, write_jsonl
from rlad_megatron.engine_api import Completion, PromptResult, SamplingSettings
from rlad_megatron.tasks.arithmetic.task import generate_records
from rlad_megatron.tasks.registry import get_task


class CountingTeacher:
    """Answers the prompt of record ``i`` correctly in its first ``i % (k + 1)`` samples, wrongly in the rest."""

    def __init__(self, tok: Any, records: list[dict]) -> None:
        self.tok = tok
        task = get_task("arithmetic")
        self.by_prompt = {tuple(task.encode_prompt(task.build_prompt(r, tok), tok)): (i, r) for i, r in
                          enumerate(records)}

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        out = []
        for p in prompts:
            i, record = self.by_prompt[tuple(p)]
            comps = []
            for j in range(sampling.n):
                answer = record["answer"] if j < i % (sampling.n + 1) else str(int(record["answer"]) + 1)
                ids = self.tok(f"#### {answer}", add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
                comps.append(Completion(ids, [0.0] * len(ids), "stop"))
            out.append(PromptResult(list(p), comps))
        return out


def test_pass_rates_reach_the_data_copy_and_the_loader(tmp_path):
    tok = build_char_tokenizer()
    records = generate_records(9, seed=0, max_digits=2)
    for r in records[::2]:
        del r["id"]  # ids derived by the loader: "<stem>-<row>"
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = get_task("arithmetic")
    dataset = load_prompt_dataset(str(src), task, tok, max_prompt_tokens=64)
    k = 4
    report = evaluate(CountingTeacher(tok, [e.record for e in dataset.examples]), task, dataset.examples, tok, k,
                      sampling=SamplingSettings(n=k, max_tokens=16))
    rates = pass_rates(report.per_prompt)
    assert sorted(rates.values()) == sorted((i % (k + 1)) / k for i in range(9))

    rows, rated = rows_with_pass_rates([dict(r) for r in records], task, "train", rates)
    assert rated == 9 and all(TEACHER_PASS_RATE in r for r in rows)
    out = tmp_path / "train_trust.jsonl"
    write_jsonl(str(out), rows)
    copy = load_prompt_dataset(str(out), task, tok, max_prompt_tokens=64)
    assert [e.id for e in copy.examples] == [e.id for e in dataset.examples]
    for i, e in enumerate(copy.examples):
        assert e.record[TEACHER_PASS_RATE] == (i % (k + 1)) / k
        assert {key: v for key, v in e.record.items() if key != TEACHER_PASS_RATE} == dataset.examples[i].record


def test_rows_the_evaluation_skipped_get_no_rate():
    task = get_task("arithmetic")
    rows = [{"id": "a", "prompt": "1+2=", "answer": "3", "extra": None},
            {"id": "b", "prompt": "not a sum", "answer": "3"},  # a bad row: the loader skips it
            {"prompt": "2+2=", "answer": "4", TEACHER_PASS_RATE: 0.9}]  # stale rate replaced
    out, rated = rows_with_pass_rates(rows, task, "data", {"a": 0.5, "data-2": 0.25, "b": 1.0})
    assert rated == 2
    assert out[0] == {"id": "a", "prompt": "1+2=", "answer": "3", TEACHER_PASS_RATE: 0.5}
    assert TEACHER_PASS_RATE not in out[1]
    assert out[2][TEACHER_PASS_RATE] == 0.25


@pytest.mark.parametrize("value", [1.5, -0.1, "high", True])
def test_loader_rejects_a_bad_pass_rate_naming_the_field(tmp_path, value):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"id": "x", "prompt": "1+2=", "answer": "3", TEACHER_PASS_RATE: value}) + "\n")
    with pytest.raises(DatasetError, match=f"field '{TEACHER_PASS_RATE}': must be a number in"):
        load_prompt_dataset(str(src), get_task("arithmetic"), build_char_tokenizer(), max_prompt_tokens=64)


def test_cli_errors_exit_2_naming_the_flag(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "x", "prompt": "1+2=", "answer": "3"}) + "\n")
    base = ["teacher-trust", "--teacher", str(tmp_path / "missing"), "--task", "arithmetic", "--data", str(data)]
    assert main(base + ["--out", str(data)]) == 2
    assert "is the input data file" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "out.json")]) == 2
    assert "give a .jsonl path" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "out.jsonl")]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "out.jsonl"), "--task-option", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
