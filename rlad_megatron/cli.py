"""``rlad-megatron train | eval | convert | config``.

    torchrun --nproc-per-node 2 -m rlad_megatron.cli train --config configs/quickstart.yaml trainer.steps=20
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from rlad_megatron.config import ConfigError, load_run_config

    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlad-megatron train: bad configuration: {err}", file=sys.stderr)
        return 2
    from rlad_megatron.console import rank_tag, send_output_to_log

    # From here on third-party output (vLLM, Megatron, torch, warnings) goes to the run's train.log, not the console.
    send_output_to_log(Path(config.trainer.output_dir) / "train.log", tag=rank_tag())
    from rlad_megatron.trainer.loop import train

    train(config, resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlad-megatron", description="RL-aware distillation (RLAD) on Megatron + vLLM")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RLAD (or a baseline) training; launch under torchrun for >1 rank")
    train.add_argument("--config", default=None, help="YAML run config (sections of rlad_megatron/config.py)")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.alpha=0.3 trainer.steps=20")
    train.set_defaults(func=_train)
    from rlad_megatron import config_cli, convert
    from rlad_megatron.eval import cli as eval_cli

    convert.register(sub)
    eval_cli.register(sub)
    config_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
