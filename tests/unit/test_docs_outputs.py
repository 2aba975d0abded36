"""The outputs the docs quote are the code's: every fenced block that starts with ``$ python -m recipes ...`` (in
recipes/README.md and docs/memory_plan.md) is rerun and must print what the block shows, and docs/memory_plan.md's
table of the paper recipes on token budgets must be what the memory plan computes (issue 28: the README quoted
124.2 GiB where the plan printed 109.0 GiB)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from recipes import get_recipe
from recipes.cli import main

REPO = Path(__file__).resolve().parents[2]
DOCS = ("recipes/README.md", "docs/memory_plan.md")
GIB = 1 << 30


def _blocks(doc: str) -> list[tuple[str, str]]:
    """(command line after ``$ python -m recipes``, the output shown under it) of every such block."""
    found, block = [], None
    for line in (REPO / doc).read_text().splitlines():
        if line.startswith("```"):
            if block is not None and block and block[0].startswith("$ python -m recipes "):
                found.append((block[0].removeprefix("$ python -m recipes "), "\n".join(block[1:])))
            block = [] if block is None else None
        elif block is not None:
            block.append(line)
    return found


CASES = [(doc, command, shown) for doc in DOCS for command, shown in _blocks(doc)]


def test_the_docs_quote_commands():
    assert {doc for doc, *_ in CASES} == set(DOCS)


@pytest.mark.parametrize("doc,command,shown", CASES, ids=[f"{d}:{c}" for d, c, _ in CASES])
def test_quoted_output_is_the_real_output(doc, command, shown, capsys):
    main(shlex.split(command))
    captured = capsys.readouterr()
    real = captured.err if shown.lstrip().startswith("error:") else captured.out
    assert " ".join(shown.split()) == " ".join(real.split()), f"{doc} quotes an output the command no longer prints"


def _table() -> list[list[str]]:
    text = (REPO / "docs" / "memory_plan.md").read_text()
    section = text.split("## The paper recipes on token budgets", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


@pytest.mark.parametrize("row", _table(), ids=lambda row: row[0])
def test_the_token_budget_table_is_the_plan(row):
    name, _gpu, budget, recompute, activations, peak = row
    words = name.strip("`").split()
    kwargs = dict(arg.split("=", 1) for arg in words[2::2]) if len(words) > 1 else {}
    recipe = get_recipe(words[0], **kwargs)
    plan = recipe.memory_plan()
    assert int(budget.replace(",", "")) == recipe.config.trainer.max_tokens_per_micro_batch
    assert recompute == recipe.config.parallel.recompute
    assert activations == f"{plan.term('student activations').bytes / GIB:.1f} GiB"
    assert peak.startswith(f"{plan.peak_gib:.1f} GiB ({plan.peak_phase}")
