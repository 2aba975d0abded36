"""``rlad-megatron eval`` argument handling (the vLLM run itself is tests/e2e/test_eval_run_eval.py)."""
from __future__ import annotations

import pytest

from rlad_megatron.cli import build_parser, main
from rlad_megatron.eval.cli import _parse_options


def test_eval_subcommand_parses_with_paper_defaults() -> None:
    args = build_parser().parse_args(["eval", "--model", "m", "--task", "math", "--data", "d.jsonl", "--out", "o",
                                      "--task-option", "fallbacks=false", "--engine-option", "dtype=bfloat16"])
    assert (args.k, args.temperature, args.top_p, args.bad_rows) == (8, 0.6, 0.95, "skip")
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

    def fake_run_eval(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_eval", fake_run_eval)
    rc = main(["eval", "--model", str(tmp_path), "--task", "math", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
               "--chat-template-kwarg", "enable_thinking=false", "--task-option", "fallbacks=false"])
    assert rc == 2
    assert seen["chat_template_kwargs"] == {"enable_thinking": False} and seen["task_options"] == {"fallbacks": False}
    assert seen["truncated"] == "zero"  # a cut-off answer is not credited unless asked
    main(["eval", "--model", str(tmp_path), "--task", "math", "--data", "d.jsonl", "--out", str(tmp_path / "o"),
          "--truncated", "reward"])
    assert seen["truncated"] == "reward"


def test_config_scores_as_the_run_trains(tmp_path, monkeypatch) -> None:
    import rlad_megatron.eval.runner as runner

    seen = {}

    def fake_run_eval(model, task, *args, **kwargs):
        seen.update(kwargs, task=task)
        raise ValueError("stop here")

    monkeypatch.setattr(runner, "run_eval", fake_run_eval)
    run = tmp_path / "run.yaml"
    run.write_text("model: {student: s, teacher: t}\n"
                   "data: {task: math, train_files: [a.jsonl], task_options: {correct: 2.0},\n"
                   "       chat_template_kwargs: {enable_thinking: false}}\n"
                   "rollout: {truncated: mask}\n")
    common = ["eval", "--model", str(tmp_path), "--data", "d.jsonl", "--out", str(tmp_path / "o"), "--config", str(run)]
    assert main(common) == 2
    assert seen["task"] == "math" and seen["task_options"] == {"fallbacks": False, "correct": 2.0}  # training defaults
    assert seen["chat_template_kwargs"] == {"enable_thinking": False} and seen["truncated"] == "zero"
    main(common + ["--task-option", "fallbacks=true", "--chat-template-kwarg", "enable_thinking=true",
                   "--truncated", "reward"])  # flags win
    assert seen["task_options"] == {"fallbacks": True, "correct": 2.0}
    assert seen["chat_template_kwargs"] == {"enable_thinking": True} and seen["truncated"] == "reward"


def test_task_or_config_is_required(tmp_path, capsys) -> None:
    rc = main(["eval", "--model", str(tmp_path), "--data", "d.jsonl", "--out", str(tmp_path / "o")])
    assert rc == 2 and "give --task" in capsys.readouterr().err
