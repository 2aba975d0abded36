"""``rlad-megatron launch`` and ``rlad-megatron plan``: your run config to a job, and its per-GPU memory plan.

    rlad-megatron plan --config my_run.yaml --gpu h100 --nodes 2 --gpus-per-node 8
    rlad-megatron launch --config my_run.yaml --executor slurm --nodes 2 --gpus-per-node 8 --account acct ...

Both are the repository's launcher, ``python -m recipes`` (``plan`` = ``--plan``): it holds the NeMo-Run
executors and the recipes, which the library itself never depends on. This module is the one edge between them: it
imports the launcher only when one of these commands runs, from the checkout this package belongs to (an editable
install: ``recipes/`` next to ``rlad_megatron/``) when ``recipes`` is not importable from the working directory.
``import rlad_megatron.cli`` stays free of NeMo-Run and of the recipes.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable, Sequence

COMMANDS: dict[str, str] = {
    "launch": "launch a run config (--config my_run.yaml) or a recipe through NeMo-Run, locally or on Slurm, after "
              "checking its placement, memory plan and files",
    "plan": "print where a run config (--config my_run.yaml) or a recipe runs and its per-GPU memory by component, "
            "from the models' own config.json",
}
#: The launcher's module (the repository's ``recipes/cli.py``).
LAUNCHER = "recipes.cli"


def register(sub: argparse._SubParsersAction) -> None:
    """List the two commands in ``rlad-megatron -h``; :func:`main` runs them (their options are the launcher's)."""
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)


def _launcher() -> Callable[..., int] | None:
    try:
        return importlib.import_module(LAUNCHER).main
    except ModuleNotFoundError as err:
        if err.name not in ("recipes", LAUNCHER):
            raise
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "recipes" / "__init__.py").is_file():
        return None
    sys.path.insert(0, str(checkout))
    return importlib.import_module(LAUNCHER).main


def main(argv: Sequence[str]) -> int:
    """``argv``: ``["launch" | "plan", options...]``."""
    command, rest = argv[0], list(argv[1:])
    launcher = _launcher()
    if launcher is None:
        print(f"rlad-megatron {command}: the launcher (recipes/, NeMo-Run) comes with the repository, not with the "
              "installed package: run it from a checkout (pip install -e '.[launch]')", file=sys.stderr)
        return 2
    if command == "plan":
        rest = ["--plan", *rest]
    return launcher(rest, prog=f"rlad-megatron {command}")
