"""``rlad-megatron data prepare``: MATH-500, AIME 2024/2025, GSM8K and GPQA-diamond from files in their public
datasets' schemas (tests run without network) to records their tasks load and score."""
from __future__ import annotations

import json

import datasets
import pytest

from rlad_megatron.cli import main
from rlad_megatron.data.benchmarks import BENCHMARKS, prepare_benchmark
from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.data.sources import DatasetError
from rlad_megatron.tasks.registry import get_task

# A few rows in each dataset's own schema (the columns of its dataset card).
MATH500 = [{"problem": "Compute $1+1$.", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Algebra",
            "level": 1, "unique_id": "test/algebra/1.json"},
           {"problem": "Simplify $\\frac{2}{4}$.", "solution": "$\\boxed{\\frac12}$", "answer": "\\frac{1}{2}",
            "subject": "Prealgebra", "level": 3, "unique_id": "test/prealgebra/7.json"}]
AIME24 = [{"id": 60, "problem": "Find $n$.", "solution": "...", "answer": "204", "url": "u", "year": "2024"}]
AIME25_I = [{"question": "Find the sum.", "answer": "70"}]
AIME25_II = [{"question": "Find the count.", "answer": "588"}]
GSM8K = [{"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3+1000=1003\n#### 1,003"}]
GPQA = [{"Record ID": "recA", "Question": "Which is a lepton? ", "Correct Answer": "electron",
         "Incorrect Answer 1": "proton", "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion",
         "High-level domain": "Physics", "Subdomain": "Particle"}]


def _load(path, task_name):
    task = get_task(task_name)
    return task, load_prompt_dataset(path, task, build_char_tokenizer(), 4096)


def test_every_benchmark_prepares_from_local_files_in_its_schema(tmp_path) -> None:
    out = tmp_path / "eval"
    datasets.Dataset.from_list(MATH500).to_parquet(str(tmp_path / "math500.parquet"))
    datasets.Dataset.from_list(AIME24).to_parquet(str(tmp_path / "aime24.parquet"))
    for name, rows in (("I", AIME25_I), ("II", AIME25_II)):
        (tmp_path / f"aime2025-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    datasets.Dataset.from_list(GSM8K).to_parquet(str(tmp_path / "gsm8k.parquet"))
    datasets.Dataset.from_list(GPQA).to_csv(str(tmp_path / "gpqa_diamond.csv"), index=False)  # the hub's format
    sources = {"math500": ["math500.parquet"], "aime24": ["aime24.parquet"],
               "aime25": ["aime2025-I.jsonl", "aime2025-II.jsonl"], "gsm8k": ["gsm8k.parquet"],
               "gpqa_diamond": ["gpqa_diamond.csv"]}
    loaded = {}
    for name, files in sources.items():
        path, count = prepare_benchmark(name, str(out), [str(tmp_path / f) for f in files])
        assert path == str(out / f"{name}.jsonl")
        loaded[name] = _load(path, BENCHMARKS[name].task)
    task, math500 = loaded["math500"]
    assert [r["answer"] for r in math500.records] == ["2", "\\frac{1}{2}"]
    assert [r["difficulty"] for r in math500.records] == ["level1", "level3"]
    assert math500.records[0]["id"] == "test/algebra/1.json" and task.reward("\\boxed{0.5}", math500.records[1]).correct
    assert [(r["id"], r["answer"]) for r in loaded["aime24"][1].records] == [("aime24-60", "204")]
    assert [(r["id"], r["answer"], r["difficulty"]) for r in loaded["aime25"][1].records] == [
        ("aime25-I-0", "70", "aime25-I"), ("aime25-II-0", "588", "aime25-II")]
    assert loaded["gsm8k"][1].records[0]["answer"] == "1003"
    task, gpqa = loaded["gpqa_diamond"]
    rec = gpqa.records[0]
    assert rec["id"] == "recA" and rec["difficulty"] == "Physics" and rec["prompt"] == "Which is a lepton?"
    assert sorted(rec["choices"]) == ["electron", "neutron", "pion", "proton"]
    assert task.reward(f"Answer: {rec['answer']}", rec).correct


def test_the_cli_prepares_lists_and_names_what_is_wrong(tmp_path, capsys) -> None:
    (tmp_path / "g.jsonl").write_text(json.dumps(GSM8K[0]) + "\n")
    assert main(["data", "prepare", "gsm8k", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "g.jsonl")]) == 0
    assert f"gsm8k: 1 records -> {tmp_path}/o/gsm8k.jsonl" in capsys.readouterr().out
    assert main(["data", "prepare", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "gpqa_diamond  Idavidrein/gpqa (config gpqa_diamond, split train;" in listing
    assert "-> task multiple_choice" in listing
    (tmp_path / "bad.jsonl").write_text(json.dumps({"problem": "p"}) + "\n")
    assert main(["data", "prepare", "math500", "--out", str(tmp_path / "o"), "--source",
                 str(tmp_path / "bad.jsonl")]) == 2
    assert f"{tmp_path}/bad.jsonl: row 0: column 'answer' is missing or empty (columns: problem)" in \
        capsys.readouterr().err
    with pytest.raises(DatasetError, match="unknown benchmark 'aime23'"):
        prepare_benchmark("aime23", str(tmp_path))
