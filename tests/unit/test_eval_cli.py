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
