"""Prompt dataset loading through `datasets`: formats, validation, bad rows, length filter, ids."""
from __future__ import annotations

import json

import pytest

from rlad_megatron.tasks.arithmetic.task import ArithmeticTask, generate_records
from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.data.prompt_dataset import DatasetError, load_prompt_dataset


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return str(path)


def load(path, tok, tmp_path, **kw):
    kw.setdefault("max_prompt_tokens", 64)
    return load_prompt_dataset(path, ArithmeticTask(), tok, cache_dir=str(tmp_path / "hf"), **kw)


def test_jsonl_parquet_arrow_load_the_same(tok, tmp_path) -> None:
    import datasets

    rows = generate_records(12, seed=3)
    jl = write_jsonl(tmp_path / "a.jsonl", rows)
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    arrow = next((tmp_path / "disk").glob("*.arrow"))
    got = [load(p, tok, tmp_path) for p in (jl, str(tmp_path / "a.parquet"), str(arrow))]
    for d in got:
        assert [e.record["id"] for e in d] == [r["id"] for r in rows]
        assert d.report.kept == 12 and d.report.rows == 12
    ex = got[0][0]
    assert ex.prompt_text == rows[0]["prompt"]
    assert ex.prompt_token_ids == tok(rows[0]["prompt"])["input_ids"]
    assert ex.prompt_token_ids[0] == tok.bos_token_id


@pytest.mark.parametrize(
    "bad_row,field",
    [
        ({"id": "x", "answer": "3"}, "prompt"),                      # missing
        ({"id": "x", "prompt": "", "answer": "3"}, "prompt"),         # empty
        ({"id": "x", "prompt": "1+2=", "answer": None}, "answer"),    # null
        ({"id": "x", "prompt": "1+2=", "answer": ["3"]}, "answer"),   # wrong type
        ({"id": "x", "prompt": "one plus two", "answer": "3"}, "prompt"),  # task-level format check
    ],
)
def test_bad_rows_error_names_file_row_field_or_skip_counts(tok, tmp_path, bad_row, field) -> None:
    rows = generate_records(4, seed=1)
    rows.insert(2, bad_row)
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        load(path, tok, tmp_path)
    msg = str(err.value)
    assert "bad.jsonl" in msg and "row 2" in msg and repr(field) in msg and "data.bad_rows=skip" in msg
    d = load(path, tok, tmp_path, bad_rows="skip")
    assert d.report.kept == 4 and d.report.skipped["invalid"] == 1
    assert "x" not in [e.id for e in d]


def test_invalid_utf8_row(tok, tmp_path) -> None:
    path = tmp_path / "enc.jsonl"
    good = [json.dumps(r).encode() for r in generate_records(3, seed=2)]
    bad = b'{"id": "bad", "prompt": "1+\xff\xfe2=", "answer": "3"}'
    path.write_bytes(b"\n".join(good[:1] + [bad] + good[1:]) + b"\n")
    with pytest.raises(DatasetError, match=r"enc\.jsonl: row 1 .*'prompt'.*UTF-8"):
        load(str(path), tok, tmp_path)
    d = load(str(path), tok, tmp_path, bad_rows="skip")
    assert d.report.skipped["invalid_utf8"] == 1 and d.report.kept == 3


def test_duplicate_ids(tok, tmp_path) -> None:
    rows = generate_records(3, seed=4)
    rows.append({**rows[0], "prompt": "7+7=", "answer": "14"})
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DatasetError, match=r"row 3.*'id'.*duplicate id 'add-0' \(first seen at row 0\)"):
        load(path, tok, tmp_path)
    d = load(path, tok, tmp_path, bad_rows="skip")
    assert d.report.skipped["duplicate_id"] == 1 and [e.id for e in d] == ["add-0", "add-1", "add-2"]


def test_missing_ids_are_derived_from_file_and_row(tok, tmp_path) -> None:
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "10+2=", "answer": 12}]
    d = load([write_jsonl(tmp_path / "noid.jsonl", rows)], tok, tmp_path)  # a one-file list, as configs give
    assert [e.id for e in d] == ["noid-0", "noid-1"]
    assert [e.record["answer"] for e in d] == ["3", "12"]
    assert [e.record["difficulty"] for e in d] == ["d1", "d2"]


def test_length_filter_counts_and_error_mode(tok, tmp_path) -> None:
    rows = [{"id": "s", "prompt": "1+2=", "answer": "3"}, {"id": "l", "prompt": "123456+654321=", "answer": "777777"}]
    path = write_jsonl(tmp_path / "len.jsonl", rows)
    d = load(path, tok, tmp_path, max_prompt_tokens=8)
    assert [e.id for e in d] == ["s"] and d.report.skipped["over_budget"] == 1
    assert d.report.max_prompt_tokens_seen == 15
    assert "over_budget=1" in d.report.summary()
    with pytest.raises(DatasetError, match=r"row 1, field 'prompt': 15 prompt tokens > max_prompt_tokens=8"):
        load(path, tok, tmp_path, max_prompt_tokens=8, over_budget="error")


def test_empty_after_filtering_is_an_error(tok, tmp_path) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", [{"id": "l", "prompt": "123456+654321=", "answer": "777777"}])
    with pytest.raises(DatasetError, match=r"long\.jsonl: no prompts left.*over_budget=1"):
        load(path, tok, tmp_path, max_prompt_tokens=4)


def test_missing_file_and_bad_options(tok, tmp_path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load(str(tmp_path / "nope.jsonl"), tok, tmp_path)
    with pytest.raises(ValueError, match="bad_rows"):
        load(str(tmp_path / "nope.jsonl"), tok, tmp_path, bad_rows="ignore")


def test_unparsable_json_names_the_line(tok, tmp_path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": "a", "prompt": "1+2=", "answer": "3"}\n{"id": "b", "prompt": \n')
    with pytest.raises(DatasetError, match=r"broken\.jsonl line 2 \(row 1\): invalid JSON"):
        load(str(path), tok, tmp_path)


def test_chat_template_is_used_when_present(tok, tmp_path) -> None:
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer

    chat = build_char_tokenizer()
    chat.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}" \
                         "{% if add_generation_prompt %}[assistant]{% endif %}"
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "prompt": "1+2=", "answer": "3"}])
    d = load_prompt_dataset(path, ArithmeticTask(), chat, max_prompt_tokens=64, cache_dir=str(tmp_path / "hf"))
    assert d[0].prompt_text == "[user]1+2=\n[assistant]"
    assert d[0].prompt_token_ids[0] != chat.bos_token_id  # template text carries its own specials


def test_folder_and_hub_dataset_take_the_load_dataset_name_path(tok, tmp_path, monkeypatch) -> None:
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", generate_records(5, seed=9))
    d = load(str(folder), tok, tmp_path)
    assert len(d) == 5 and d.report.source == str(folder)
    # Our machines cannot reach the hub: offline mode (read at import, hence the attributes) makes the very same
    # load_dataset(name) call fail at once instead of after network timeouts.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match=r"hub:some-org/some-dataset: could not load with `datasets`"):
        load("hub:some-org/some-dataset", tok, tmp_path)
    # Without the prefix a value is a local path: a missing one is reported missing, never looked up on the hub.
    with pytest.raises(DatasetError, match=r"not found: some-org/some-dataset \(a hub dataset is written hub:"):
        load("some-org/some-dataset", tok, tmp_path)
