"""Your own data (issue 28): data.fields column mapping with dotted paths, conversational rows (TRL ``prompt`` turns,
``messages`` with the reference reply), data.split, save_to_disk folders, several files, extra fields kept on each
example, and check_data_files (the first rows, no tokenizer) naming key, file, row and field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.data.check import check_data_files
from rlad_megatron.data.prompt_dataset import DatasetError, load_prompt_dataset
from rlad_megatron.data.rows import field_value, prepare_row, split_turns
from rlad_megatron.tasks.arithmetic.task import ArithmeticTask
from rlad_megatron.tasks.base import RecordError
from rlad_megatron.tasks.math.task import MathTask
from rlad_megatron.tiny.chat_models import build_qwen3_style_tokenizer

SYSTEM = {"role": "system", "content": "You are a careful grader."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load(source, task, tmp_path, tok=None, **kw):
    return load_prompt_dataset(source, task, tok or build_char_tokenizer(), max_prompt_tokens=512,
                               cache_dir=str(tmp_path / "hf"), **kw)


def test_trl_conversational_row_loads_for_math(tmp_path) -> None:
    """Failed before with ``field 'reward_model.ground_truth': missing``: TRL rows hold the prompt as turns and the
    final answer in ``solution`` (or ``answer``), not verl's ``reward_model``."""
    rows = [{"prompt": [SYSTEM, user("What is 2+3?")], "solution": "5"},
            {"prompt": [user("What is 1/2 + 1/2?")], "answer": "1"},
            {"prompt": [user("Area?")], "solution": "So the area is \\boxed{\\frac{3}{4}}."}]
    d = load(write_jsonl(tmp_path / "trl.jsonl", rows), MathTask(), tmp_path)
    recs = d.records
    assert [r["answer"] for r in recs] == ["5", "1", "\\frac{3}{4}"]
    assert recs[0]["prompt"] == "What is 2+3?" and recs[0]["system"] == "You are a careful grader."
    assert "system" not in recs[1] and d[0].prompt_text.startswith("You are a careful grader.\n\n")
    assert MathTask().reward("\\boxed{5}", recs[0]).correct


def test_messages_row_takes_its_last_assistant_turn_as_the_reference(tmp_path) -> None:
    """Failed before with ``field 'prompt': missing``: a ``messages`` conversation ending with the assistant's
    reference reply. System turns are kept, earlier turns go before the last user turn in the chat."""
    rows = [{"messages": [SYSTEM, user("What is 2+3?"), assistant("2+3 is \\boxed{5}.")]},
            {"messages": [user("Hi"), assistant("Hello! Ask away."), user("What is 3*3?"), assistant("9")]}]
    tok = build_qwen3_style_tokenizer()
    d = load(write_jsonl(tmp_path / "msgs.jsonl", rows), MathTask(), tmp_path, tok=tok)
    first, second = d.records
    assert (first["prompt"], first["answer"], first["system"]) == ("What is 2+3?", "5", SYSTEM["content"])
    assert second["prompt"] == "What is 3*3?" and second["answer"] == "9"
    assert second["history"] == [user("Hi"), assistant("Hello! Ask away.")]
    text = d[1].prompt_text
    assert text.index("<|im_start|>user\nHi") < text.index("<|im_start|>assistant\nHello!") < \
        text.index("<|im_start|>user\nWhat is 3*3?")
    assert d[0].prompt_text.startswith("<|im_start|>system\nYou are a careful grader.<|im_end|>")


def test_fields_map_columns_and_dotted_paths_and_keep_the_rest(tmp_path) -> None:
    rows = [{"q": f"{i}+1=", "meta": {"sum": i + 1, "tags": ["easy"]}, "teacher_pass_rate": 0.25 * i}
            for i in range(3)]
    fields = {"prompt": "q", "answer": "meta.sum", "difficulty": "meta.tags.0"}
    d = load(write_jsonl(tmp_path / "own.jsonl", rows), ArithmeticTask(), tmp_path, fields=fields)
    rec = d[2].record
    assert (rec["prompt"], rec["answer"], rec["difficulty"]) == ("2+1=", "3", "easy")
    assert rec["teacher_pass_rate"] == 0.5 and rec["meta"]["sum"] == 3  # every column stays on the example
    with pytest.raises(DatasetError, match=r"own\.jsonl: row 0 .*field 'meta.answer': missing "
                                           r"\(data\.fields\.answer=meta\.answer; columns of this row: meta, q, "):
        load(str(tmp_path / "own.jsonl"), ArithmeticTask(), tmp_path, fields={"prompt": "q", "answer": "meta.answer"})


def test_unmapped_fields_name_the_columns_and_the_fix(tmp_path) -> None:
    path = write_jsonl(tmp_path / "cols.jsonl", [{"question_text": "1+1=", "gold": "2"}])
    with pytest.raises(DatasetError, match=r"cols\.jsonl: row 0 .*field 'prompt': missing \(this row's columns: gold, "
                                           r"question_text; map one to it with data\.fields\.prompt=COLUMN\)"):
        load(path, ArithmeticTask(), tmp_path)


def test_split_selects_from_saved_and_hub_layout_folders(tmp_path) -> None:
    """``data.split`` was hard-coded to ``train``; a ``save_to_disk`` folder did not load at all."""
    import datasets

    train = [{"id": f"tr{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(4)]
    test = [{"id": f"te{i}", "prompt": f"{i}+2=", "answer": str(i + 2)} for i in range(2)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(str(tmp_path / "saved_dict"))
    datasets.Dataset.from_list(train).save_to_disk(str(tmp_path / "saved"))
    hub_layout = tmp_path / "downloaded" / "data"
    hub_layout.mkdir(parents=True)
    datasets.Dataset.from_list(train).to_parquet(str(hub_layout / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(test).to_parquet(str(hub_layout / "test-00000-of-00001.parquet"))
    task = ArithmeticTask()
    assert [e.id for e in load(str(tmp_path / "saved_dict"), task, tmp_path, split="test")] == ["te0", "te1"]
    assert len(load(str(tmp_path / "saved_dict"), task, tmp_path)) == 4
    assert len(load(str(tmp_path / "saved"), task, tmp_path)) == 4
    assert [e.id for e in load(str(tmp_path / "downloaded"), task, tmp_path, split="test")] == ["te0", "te1"]
    with pytest.raises(DatasetError, match=r"saved_dict: no split 'validation'; it has \['test', 'train'\]"):
        load(str(tmp_path / "saved_dict"), task, tmp_path, split="validation")


def test_several_files_and_formats_name_their_own_rows(tmp_path) -> None:
    import datasets

    good = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]
    datasets.Dataset.from_list(good).to_parquet(str(tmp_path / "a.parquet"))
    second = write_jsonl(tmp_path / "b.jsonl", good[:1] + [{"prompt": "1+1="}])
    with pytest.raises(DatasetError, match=r"b\.jsonl: row 1 .*field 'answer'"):
        load([str(tmp_path / "a.parquet"), second], ArithmeticTask(), tmp_path)
    d = load([str(tmp_path / "a.parquet"), second], ArithmeticTask(), tmp_path, bad_rows="skip")
    assert [e.id for e in d] == ["a-0", "a-1", "a-2", "b-0"] and d.report.rows == 5


def test_conversational_parquet_rows(tmp_path) -> None:
    import datasets

    rows = [{"prompt": [SYSTEM, user("What is 6*7?")], "solution": "42"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "trl.parquet"))
    rec = load(str(tmp_path / "trl.parquet"), MathTask(), tmp_path)[0].record
    assert (rec["prompt"], rec["answer"], rec["system"]) == ("What is 6*7?", "42", SYSTEM["content"])


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": [SYSTEM, user("q"), assistant("a")]}, "prompt", "the last turn is a 'assistant' turn"),
    ({"prompt": [SYSTEM]}, "prompt", "has no user turn"),
    ({"prompt": [{"content": "x"}]}, "prompt", "turn 0 is not a {role, content} mapping"),
    ({"prompt": [{"role": "user", "content": 3}]}, "prompt", "a turn's content must be text"),
    ({"messages": [assistant("only a reply")]}, "messages", "holds only the assistant's reply"),
])
def test_bad_turns(row, field, message) -> None:
    with pytest.raises(RecordError) as err:
        prepare_row(row)
    assert err.value.field == field and message in err.value.reason


def test_turn_details() -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert split_turns(parts) == {"prompt": "ab"}
    assert field_value({"a.b": 1, "a": {"b": 2}}, "a.b") == 1  # a column named with a dot wins
    assert field_value({"m": [{"c": "x"}, {"c": "y"}]}, "m.-1.c") == "y"
    assert prepare_row({"messages": [user("q")], "answer": "7"}) == {"messages": [user("q")], "answer": "7",
                                                                     "prompt": "q"}


def _data(**kw) -> SimpleNamespace:
    base = dict(task="arithmetic", task_options={}, train_files=[], eval_files=[], fields={}, split="train",
                eval_split=None, bad_rows="error")
    return SimpleNamespace(**{**base, **kw})


def test_check_data_files_names_key_file_row_and_field(tmp_path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "1+1=", "answer": "2"}] * 2)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "1+1="}])
    (tmp_path / "empty.jsonl").write_text("\n")
    assert check_data_files(_data(train_files=[good], eval_files=[good])) == []
    problems = check_data_files(_data(train_files=[good, bad, str(tmp_path / "empty.jsonl")],
                                      eval_files=[str(tmp_path / "nope.parquet"), "hub:org/name"]))
    assert problems == [
        f"data.train_files: {bad}: row 1 (0-based; line 2 of a .jsonl), field 'answer': missing (this row's "
        "columns: prompt; map one to it with data.fields.answer=COLUMN)",
        f"data.train_files: data file {tmp_path}/empty.jsonl is empty: no rows to load",
        f"data.eval_files: data file or folder not found: {tmp_path}/nope.parquet (a hub dataset is written "
        "hub:ORG/NAME)",
    ]
    # bad_rows=skip: a stray bad row is fine, a wrong mapping (every row bad) is not
    assert check_data_files(_data(train_files=[bad], bad_rows="skip")) == []
    wrong = check_data_files(_data(train_files=[good], fields={"prompt": "question"}, bad_rows="skip"))
    assert len(wrong) == 1 and "field 'question': missing" in wrong[0] and "is data.fields right?" in wrong[0]
    assert check_data_files(_data(task="nope", train_files=[good]))[0].startswith("unknown task 'nope'")


def test_check_data_files_loads_no_tokenizer_or_model(tmp_path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"messages": [user("1+1="), assistant("2")]}])
    code = ("import sys; from types import SimpleNamespace as N; from rlad_megatron.data.check import "
            "check_data_files as c; "
            f"p = c(N(task='arithmetic', task_options={{}}, train_files=[{good!r}], eval_files=[], fields={{}}, "
            "split='train', eval_split=None, bad_rows='error')); "
            "heavy = [m for m in ('transformers', 'vllm', 'megatron', 'torch.distributed') if m in sys.modules]; "
            "print(p, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[] []"
