"""``rlad-megatron config``: what a run config can hold, and what a given one resolves to.

    rlad-megatron config --defaults                 # every key, its default, type and meaning (commented YAML)
    rlad-megatron config --defaults rollout         # one section
    rlad-megatron config --config my_run.yaml loss.alpha=0.3    # the validated config a train command would run
"""
from __future__ import annotations

import argparse
import sys

import yaml

from rlad_megatron.config.docs import render_defaults
from rlad_megatron.config.run import load_run_config, run_config_to_dict
from rlad_megatron.config.validators import ConfigError


def _config(args: argparse.Namespace) -> int:
    if args.defaults is not None:
        try:
            sys.stdout.write(render_defaults(args.defaults or None))
        except KeyError as err:
            print(f"rlad-megatron config: {err.args[0]}", file=sys.stderr)
            return 2
        return 0
    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlad-megatron config: bad configuration: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump(run_config_to_dict(config), sort_keys=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="print every config key with its default and meaning (--defaults), or "
                                           "the validated config a train command would run")
    parser.add_argument("--defaults", nargs="?", const="", default=None, metavar="SECTION",
                        help="print the defaults of every key (or of one section, e.g. loss or trainer.wandb) "
                             "with their meaning, as a commented YAML file")
    parser.add_argument("--config", default=None, help="YAML run config to resolve and validate")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.alpha=0.3")
    parser.set_defaults(func=_config)
