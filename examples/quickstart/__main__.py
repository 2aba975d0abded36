"""``python -m examples.quickstart [--output-dir DIR] [--steps N] [--algorithm rlad|grpo|kdrl] ...``"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from examples.quickstart.settings import QuickstartSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.quickstart",
                                description="RLAD on CPU, end to end: tiny teacher -> student, before/after table.")
    p.add_argument("--output-dir", default="outputs/quickstart", help="where data, cache, run and results go")
    p.add_argument("--steps", type=int, default=None, help="RLAD training steps (default: the settings')")
    p.add_argument("--algorithm", choices=("rlad", "grpo", "kdrl"), default=None)
    p.add_argument("--alpha", type=float, default=None, help="TRRD alpha (weight on the old student)")
    p.add_argument("--no-train", action="store_true", help="prepare and evaluate only (no RLAD run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = QuickstartSettings()
    if args.steps is not None:
        settings.rl.steps = args.steps
    if args.algorithm is not None:
        settings.rl.algorithm = args.algorithm
    if args.alpha is not None:
        settings.rl.alpha = args.alpha
    from rlad_megatron.console import say, send_output_to_log

    # Third-party output of this process (the evaluations' vLLM engine, transformers) goes to quickstart.log; the
    # training ranks write theirs to run/train.log.
    send_output_to_log(Path(args.output_dir) / "quickstart.log", tag="quickstart", fresh=True)
    from examples.quickstart.run import run_quickstart
    from examples.quickstart.train import TrainingFailed

    try:
        run_quickstart(settings, Path(args.output_dir), train=not args.no_train)
    except TrainingFailed as err:
        say(f"quickstart: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
