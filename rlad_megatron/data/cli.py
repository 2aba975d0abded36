"""``rlad-megatron data``: prepare public benchmarks, check a run's data files.

    rlad-megatron data prepare --list
    rlad-megatron data prepare math500 gpqa_diamond --out data/eval          # from the hub
    rlad-megatron data prepare aime25 --out data/eval --source I.jsonl --source II.jsonl   # from local files
    rlad-megatron data check --config my_run.yaml [overrides]      # the data's first rows, no model loaded
"""
from __future__ import annotations

import argparse
from typing import Any


def _prepare(args: argparse.Namespace) -> int:
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.console import say
    from rlad_megatron.data.benchmarks import BENCHMARKS, prepare_benchmark
    from rlad_megatron.data.sources import DatasetError

    if args.list or not args.names:
        for b in BENCHMARKS.values():
            configs = ", ".join(c for c in b.configs if c) or "-"
            say(f"{b.name:13} {b.repo} (config {configs}, split {b.split}; columns {b.columns}) -> task {b.task}",
                stdout=True)
        return 0
    if args.source and len(args.names) != 1:
        say("rlad-megatron data prepare: --source needs exactly one benchmark name")
        return 2
    for name in args.names:
        try:
            path, count = prepare_benchmark(name, args.out, args.source, cache_dir=args.cache_dir)
        except (DatasetError, DiskFullError) as err:
            say(f"rlad-megatron data prepare: {err}")
            return 2
        say(f"{name}: {count} records -> {path} (rlad-megatron eval --data {name}={path}; task "
            f"{BENCHMARKS[name].task})", stdout=True)
    return 0


def _check(args: argparse.Namespace) -> int:
    # lazy: the CLI registers every command; a command's imports wait until it runs
    from rlad_megatron.config import ConfigError, load_run_config
    from rlad_megatron.console import say
    from rlad_megatron.data.check import check_data_files

    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        say(f"rlad-megatron data check: bad configuration: {err}")
        return 2
    problems = check_data_files(config.data)
    for problem in problems:
        say(f"rlad-megatron data check: {problem}")
    if problems:
        return 2
    files = len(config.data.train_files) + len(config.data.eval_files)
    say(f"data ok: {files} file(s), first rows valid for task {config.data.task}", stdout=True)
    return 0


def register(sub: Any) -> None:
    """Add the ``data`` subcommand to the top-level CLI's subparsers."""
    p = sub.add_parser("data", help="prepare public benchmarks (MATH-500, AIME, GSM8K, GPQA), check a run's data")
    inner = p.add_subparsers(dest="data_command", required=True)
    prep = inner.add_parser("prepare", help="write a public benchmark as our records (NAME.jsonl)")
    prep.add_argument("names", nargs="*", metavar="NAME", help="benchmarks (--list shows them)")
    prep.add_argument("--list", action="store_true", help="the benchmarks, their datasets and columns")
    prep.add_argument("--out", default="data/eval", help="output folder (default: data/eval)")
    prep.add_argument("--source", action="append", default=[], metavar="FILE",
                      help="read a local copy in the dataset's schema instead of the hub (one per config, in "
                           "order; e.g. aime25: the AIME2025-I then the AIME2025-II file)")
    prep.add_argument("--cache-dir", default=None, help="datasets' cache folder")
    prep.set_defaults(func=_prepare)
    check = inner.add_parser("check", help="check that a run's data files exist and their first rows are valid "
                                           "for its task (no model or tokenizer loaded)")
    check.add_argument("--config", required=True, help="YAML run config")
    check.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.split=test")
    check.set_defaults(func=_check)
