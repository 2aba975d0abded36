"""``python -m examples.compare --task arithmetic|knights_knaves_compact|knights_knaves --seeds 3 --out outputs/compare``

Runs sft, grpo, kdrl and rlad (alpha 0.5) from the same student and teacher with the same rollout budget over
``--seeds`` seeds, plus the rlad alpha sweep over ``--sweep-seeds`` seeds, each in every ``--rollout-modes`` mode
(default sync; ``sync,async`` adds one-step off-policy twins), then writes the table and plots.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from examples.compare.settings import (ARMS, COMPARED_ALGORITHMS, ROLLOUT_MODES, SWEEP_ALPHAS, TASKS, short_settings,
                                       task_settings)

DEFAULT_TASKS: tuple[str, ...] = ("arithmetic", "knights_knaves_compact")


def parse_value(text: str) -> object:
    """A ``KEY=VALUE`` value: YAML (numbers, booleans, strings), plus ``2e-4``-style floats, which YAML 1.1 reads as
    strings."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def rollout_modes(text: str) -> list[str]:
    """``--rollout-modes sync,async`` -> ["sync", "async"] (each known, no repeats)."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ROLLOUT_MODES]
    if not modes or unknown or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct modes out of {list(ROLLOUT_MODES)}, "
                                         "comma-separated (e.g. sync,async)")
    return modes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.compare", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=TASKS, action="append",
                   help=f"task(s) to compare (default: {' and '.join(DEFAULT_TASKS)}; the English knights_knaves "
                        "is too long for tiny CPU models, see docs/results.md)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the main comparison (0..N-1)")
    p.add_argument("--sweep-seeds", type=int, default=1, help="seeds of each alpha-sweep point (0..N-1)")
    p.add_argument("--alphas", type=float, nargs="*", default=list(SWEEP_ALPHAS), help="alpha sweep points")
    p.add_argument("--algorithms", nargs="+", choices=ARMS, default=list(COMPARED_ALGORITHMS),
                   help="arms: the four algorithms, or one with a teacher-signal variant (rlad+topk, rlad+gate, "
                        "kdrl+gate: examples.compare.settings.ARM_VARIANTS)")
    p.add_argument("--rollout-modes", type=rollout_modes, default=["sync"], metavar="sync,async",
                   help="rollout modes, comma-separated: every algorithm and seed runs in each (async: one step "
                        "off-policy, the engine in its own process; docs/async_rollouts.md). Default: sync")
    p.add_argument("--steps", type=int, default=None, help="override the task's RL steps")
    p.add_argument("--lr", type=float, default=None, help="override the task's RL learning rate")
    p.add_argument("--rl", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override fields of the task's RL budget (recipes.small.SmallRun), e.g. prompts_per_step=32")
    p.add_argument("--loss", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra loss.* settings for every run, e.g. teacher_log_ratio_clip=2.0")
    p.add_argument("--reeval-k", type=int, default=None,
                   help="after the runs, evaluate every final student again with K samples per prompt (Mean@K)")
    p.add_argument("--short", action="store_true", help="the test suite's tiny version (2 steps)")
    p.add_argument("--out", default="outputs/compare", help="output root (one folder per task)")
    p.add_argument("--timeout", type=float, default=None, help="stop a task's worker after this many seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    from examples.compare.run import run_comparison

    args = build_parser().parse_args(argv)
    code = 0
    for task in args.task or list(DEFAULT_TASKS):
        s = short_settings(task) if args.short else task_settings(task)
        if args.steps is not None:
            s.rl = dataclasses.replace(s.rl, steps=args.steps)
        if args.lr is not None:
            s.rl = dataclasses.replace(s.rl, lr=args.lr)
        if args.rl:
            fields = {f.name for f in dataclasses.fields(s.rl)} - {"loss"}
            extra = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.rl)}
            unknown = sorted(set(extra) - fields)
            if unknown:
                raise SystemExit(f"--rl: unknown field(s) {unknown}; choose from {sorted(fields)}")
            s.rl = dataclasses.replace(s.rl, **extra)
        if args.loss:
            extra = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.loss)}
            s.rl = dataclasses.replace(s.rl, loss={**s.rl.loss, **extra})
        summary = run_comparison(s, Path(args.out), seeds=range(args.seeds), sweep_alphas=args.alphas,
                                 sweep_seeds=range(args.sweep_seeds), algorithms=args.algorithms,
                                 timeout_s=args.timeout, reeval_k=args.reeval_k,
                                 rollout_modes=args.rollout_modes)
        print((Path(args.out).resolve() / task / "report.md").read_text(), flush=True)
        print(f"{task}: {summary['seconds']}", flush=True)
        code = code or int(summary["worker_exit_code"] != 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
