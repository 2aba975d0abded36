"""`rlad-megatron config --defaults`: every key of the run config, with its default, type and meaning."""
from __future__ import annotations

import os

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from rlad_megatron.cli import main
from rlad_megatron.config import RunConfig, run_config_to_dict
from rlad_megatron.config.docs import field_docs, iter_keys, render_defaults, type_name


def _leaf_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_field_has_a_meaning() -> None:
    docs = list(iter_keys())
    assert [d.key for d in docs] == _leaf_keys()
    undocumented = [d.key for d in docs if len(d.doc) < 8]
    assert not undocumented, f"config fields without a docstring: {undocumented}"


def test_defaults_output_is_yaml_holding_exactly_the_defaults() -> None:
    text = render_defaults()
    assert yaml.safe_load(text) == run_config_to_dict(RunConfig())


def test_each_key_is_preceded_by_its_type_and_meaning() -> None:
    lines = render_defaults().splitlines()
    stack: list[tuple[int, str]] = []
    found = {}
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        name = line.strip().split(":", 1)[0]
        stack = [(d, n) for d, n in stack if d < indent]
        if line.rstrip().endswith(":"):
            stack.append((indent, name))
            continue
        comment = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            comment.insert(0, lines[j].strip()[2:])
            j -= 1
        found[".".join([n for _, n in stack] + [name])] = " ".join(comment)
    for doc in iter_keys():
        text = found[doc.key]
        assert text.startswith(f"[{doc.type_name}] "), (doc.key, text)
        first_words = " ".join(doc.doc.replace("``", "`").split()[:4])
        assert first_words in text, (doc.key, text)


def test_attribute_docstrings_and_metadata() -> None:
    @dataclass
    class Section:
        a: int = 1
        """The a."""
        b: typing.Literal["x", "y"] = "x"
        c: float | None = field(default=None, metadata={"doc": "The c, from metadata."})
        """Overridden by the metadata."""

    assert field_docs(Section) == {"a": "The a.", "c": "The c, from metadata."}
    assert type_name(typing.get_type_hints(Section)["b"]) == "x|y"
    assert type_name(float | None) == "float | None" and type_name(list[str]) == "list[str]"


def test_cli_prints_defaults_sections_and_resolved_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--defaults"]) == 0
    everything = capsys.readouterr().out
    assert "  # [float] TRRD: weight on the OLD student" in everything and "\n  alpha: 0.5\n" in everything

    assert main(["config", "--defaults", "trainer.wandb"]) == 0
    wandb = yaml.safe_load(capsys.readouterr().out)
    assert wandb == {"trainer": {"wandb": run_config_to_dict(RunConfig())["trainer"]["wandb"]}}

    assert main(["config", "--defaults", "lossy"]) == 2
    assert "no config section 'lossy'" in capsys.readouterr().err

    assert main(["config", "model.student=s", "model.teacher=t", "data.train_files=[a.jsonl]", "loss.alpha=0.3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["loss"]["alpha"] == 0.3 and resolved["data"]["train_files"] == [os.path.abspath("a.jsonl")]

    assert main(["config", "model.student=s", "loss.alpha=2"]) == 2
    assert "bad configuration" in capsys.readouterr().err
