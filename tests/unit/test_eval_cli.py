"""``rlad-megatron eval`` argument handling: flags, --config, several benchmarks with their own tasks, --split,
--fields (the vLLM run itself is tests/e2e/test_eval_run_eval.py)."""
from __future__ import annotations

import pytest

from rlad_megatron.cli import build_parser, main
from rlad_megatron.eval.cli import _parse_options, parse_data


def test_eval_subcommand_parses_with_paper_defaults() -> None:
    args = build_parser().parse_args(["eval", "--model", "m", "--task", "math", "--data", "d.jsonl", "--out", "o",
                                      "--task-option", "fallbacks=false", "--engine-option", "dtype=bfloat16"])
    assert (args.k, args.temperature, args.top_p, args.bad_rows, args.task) == (8, 0.6, 0.95, "skip", ["math"])
    assert _parse_options(args.task_option, "x") == {"fallbacks": False}
    assert _parse_options(args.engine_option, "x") == {"dtype": "bfloat16"}
    with pytest.raises(ValueError, match="key=value"):
        _parse_options(["novalue"], "--task-option")


def test_missing_model_dir_is_a_clear_error(tmp_path, capsys) -> None:
    rc = main(["eval", "--model", str(tmp_path / "nope"), "--task", "arithmetic", "--data", "d.jsonl",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "nope: no such folder" in capsys.readouterr().err


def test_chat_template_kwargs_and_truncated_reach_run_eval(tmp_path, monkeypatch) -> None:
    import rlad_megatron.eval.runner as runner

    seen = {}

    def fake_run_benchmarks(model, sets, *args, **kwargs):
        seen.update(kwargs, sets=sets)
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_benchmarks", fake_run_benchmarks)
    rc = main(["eval", "--model", str(tmp_path), "--task", "math", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
               "--chat-template-kwarg", "enable_thinking=false", "--task-option", "fallbacks=false"])
    assert rc == 2
    assert seen["chat_template_kwargs"] == {"enable_thinking": False}
    assert seen["sets"][0].task_options == {"fallbacks": False} and seen["sets"][0].name == "d"
    assert seen["log_file"] == str(tmp_path / "o" / "eval.log")  # vLLM's messages go there, not to the console
    assert seen["truncated"] == "zero"  # a cut-off answer is not credited unless asked
    main(["eval", "--model", str(tmp_path), "--task", "math", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
          "--truncated", "reward"])
    assert seen["truncated"] == "reward"


def test_config_scores_as_the_run_trains(tmp_path, monkeypatch) -> None:
    import rlad_megatron.eval.runner as runner

    seen = {}

    def fake_run_benchmarks(model, sets, *args, **kwargs):
        seen.update(kwargs, sets=sets)
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_benchmarks", fake_run_benchmarks)
    run = tmp_path / "run.yaml"
    run.write_text("model: {student: s, teacher: t}\n"
                   "data: {task: math, train_files: [a.jsonl], task_options: {correct: 2.0},\n"
                   "       chat_template_kwargs: {enable_thinking: false}, fields: {prompt: q}, split: test}\n"
                   "rollout: {truncated: mask, dtype: bfloat16}\n")
    common = ["eval", "--model", str(tmp_path), "--data", "d.jsonl", "--out", str(tmp_path / "o"), "--config", str(run)]
    assert main(common) == 2
    (s,) = seen["sets"]
    assert s.task == "math" and s.task_options == {"fallbacks": False, "correct": 2.0}  # training defaults
    assert (s.fields, s.split) == ({"prompt": "q"}, "test")
    assert seen["chat_template_kwargs"] == {"enable_thinking": False} and seen["truncated"] == "zero"
    assert seen["rollout"].dtype == "bfloat16"  # the engine takes the run's dtype
    main(common + ["--task-option", "fallbacks=true", "--chat-template-kwarg", "enable_thinking=true",
                   "--truncated", "reward", "--split", "validation", "--fields", "answer=a.b"])  # flags win
    (s,) = seen["sets"]
    assert s.task_options == {"fallbacks": True, "correct": 2.0} and s.split == "validation"
    assert s.fields == {"prompt": "q", "answer": "a.b"}
    assert seen["chat_template_kwargs"] == {"enable_thinking": True} and seen["truncated"] == "reward"


def test_several_benchmarks_each_with_its_task(tmp_path, monkeypatch) -> None:
    import rlad_megatron.eval.runner as runner

    seen = {}

    def fake_run_benchmarks(model, sets, *args, **kwargs):
        seen["sets"] = sets
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_benchmarks", fake_run_benchmarks)
    assert main(["eval", "--model", str(tmp_path), "--out", str(tmp_path / "o"), "--task", "math",
                 "--data", "aime24=a.jsonl,math500=hub:HuggingFaceH4/MATH-500", "--data", "gpqa_diamond=g.jsonl",
                 "--data", "mine=m.parquet", "--task", "mine=multiple_choice", "--task-option", "fallbacks=true"]) == 2
    got = {s.name: (s.source, s.task, dict(s.task_options)) for s in seen["sets"]}
    assert got == {"aime24": ("a.jsonl", "math", {"fallbacks": True}),
                   "math500": ("hub:HuggingFaceH4/MATH-500", "math", {"fallbacks": True}),
                   "gpqa_diamond": ("g.jsonl", "multiple_choice", {}),  # a prepared benchmark's own task
                   "mine": ("m.parquet", "multiple_choice", {})}


@pytest.mark.parametrize("args, message", [
    (["--data", "a=x.jsonl,a=y.jsonl", "--task", "math"], "benchmark names must differ"),
    (["--data", "a=x.jsonl", "--task", "b=math"], "--task b=...: no benchmark named 'b' in --data"),
    (["--data", "=x.jsonl", "--task", "math"], "--data expects PATH or NAME=PATH"),
    (["--data", "x.jsonl", "--task", "nope"], "--task='nope' is not a registered task"),
    (["--data", "x.jsonl", "--task", "math", "--fields", "prompt"], "--fields expects NAME=VALUE"),
])
def test_bad_eval_arguments_are_one_line(tmp_path, capsys, args, message) -> None:
    model = tmp_path / "m"
    assert main(["eval", "--model", str(model), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_parse_data() -> None:
    assert parse_data(["a.jsonl", "x=hub:org/name:main,y=/d/folder/"]) == [
        ("a", "a.jsonl"), ("x", "hub:org/name:main"), ("y", "/d/folder/")]


def test_task_or_config_is_required(tmp_path, capsys) -> None:
    rc = main(["eval", "--model", str(tmp_path), "--data", "d.jsonl", "--out", str(tmp_path / "o")])
    assert rc == 2 and "give --task" in capsys.readouterr().err
