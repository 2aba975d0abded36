"""The configuration package: one home for each section's schema and for the checks they are written with."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import rlad_megatron
from rlad_megatron.config import ConfigError, RolloutConfig, RunConfig, load_run_config, megatron_teacher
from rlad_megatron.config.validators import at_least, choice, greater_than, in_range

PACKAGE = Path(rlad_megatron.__file__).resolve().parent


def test_the_validators_exist_once() -> None:
    """No module outside ``config/validators.py`` defines its own range or choice check."""
    names = {"_in_range", "_choice", "_at_least", "in_range", "choice", "at_least", "greater_than"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "config" / "validators.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{path.relative_to(PACKAGE)}:{n.name}" for n in ast.walk(tree)
                  if isinstance(n, ast.FunctionDef) and n.name in names]
    assert found == []


def test_validators_name_the_key_and_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"a.b must be >= 1, got 0"):
        at_least("a.b", 0, 1)
    with pytest.raises(ConfigError, match=r"a.b must be > 0, got nan"):
        greater_than("a.b", float("nan"), 0)
    with pytest.raises(ConfigError, match=r"a.b must be in \(0, 1\], got inf"):
        in_range("a.b", float("inf"), 0, 1, low_open=True)
    with pytest.raises(ConfigError, match=r"a.b must be one of 'x', 'y' or 'z', got 'w'"):
        choice("a.b", "w", ("x", "y", "z"))
    in_range("a.b", 1, 0, 1)
    choice("a.b", "sync", ("sync", "async"))


def test_rollout_keys_are_declared_concern_by_concern() -> None:
    names = [f.name for f in dataclasses.fields(RolloutConfig)]
    starts = [names.index(first) for first in RolloutConfig.CONCERNS]
    assert starts == sorted(starts) and starts[0] == 0 and len(names) == 25


def test_literal_keys_refuse_other_values_at_load_and_store_plain_strings() -> None:
    base = ["model.student=/s", "data.train_files=a", "loss.algorithm=grpo"]
    config = load_run_config(None, base + ["rollout.placement=disaggregated", "rollout.mode=async"])
    assert type(config.rollout.placement) is str and type(config.rollout.mode) is str
    with pytest.raises(ConfigError, match="rollout.executor='ray': choose one of 'auto', 'uni', 'external_launcher'"):
        load_run_config(None, base + ["rollout.executor=ray"])


def test_a_megatron_teacher_is_decided_in_one_place() -> None:
    def run(algorithm: str, source: str) -> RunConfig:
        return load_run_config(None, ["model.student=/s", "model.teacher=/t", "data.train_files=a",
                                      f"loss.algorithm={algorithm}", f"teacher.source={source}"])

    assert megatron_teacher(run("rlad", "megatron")) and megatron_teacher(run("kdrl", "megatron"))
    assert not megatron_teacher(run("rlad", "vllm")) and not megatron_teacher(run("sft", "megatron"))
    assert not megatron_teacher(run("grpo", "megatron"))
