"""``rlad-megatron train | eval | teacher-trust | convert | config | data | plan | launch``.

    torchrun --nproc-per-node 2 -m rlad_megatron.cli train --config configs/quickstart.yaml trainer.steps=20
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    """Check, then build: every problem knowable before a process group starts or a model loads is found first
    (the config, then ``trainer.setup.checks.run_problems``), said once on the console (``refusal.refuse``: global
    rank 0 under torchrun) and the command exits 2; then the run's folder (its lock, what to resume), then the
    run, whose output goes to ``train.log``."""
    # lazy, as every import of this module: `--help` and the other commands do not load the trainer's parts
    from rlad_megatron.config import ConfigError, load_run_config
    from rlad_megatron.refusal import refuse

    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        return refuse([f"bad configuration: {err}"], command=COMMAND)
    # lazy: `config` and `--help` do not load the trainer
    from rlad_megatron.trainer.setup.checks import run_problems

    # this machine, model folders, data and its first rows, the reward reference, output folder, what the engine
    # can serve here, tokenizers: before any process group, model or file of the run
    problems = run_problems(config)
    if problems:
        return refuse(problems, command=COMMAND)

    rank0 = os.environ.get("RANK", "0") == "0"  # torchrun's global rank; the process group does not exist yet
    # lazy: `config` and `--help` do not load the trainer
    from rlad_megatron.run_lock import RunLockError, hold_run_lock

    try:
        lock = hold_run_lock(Path(config.trainer.output_dir), rank0=rank0)  # one writer per run
    except RunLockError as err:
        return refuse([str(err)], command=COMMAND)
    try:
        return _train_holding_the_lock(args, config, lock, rank0)
    finally:
        lock.release()


COMMAND = "rlad-megatron train"


def _train_holding_the_lock(args: argparse.Namespace, config, lock, rank0: bool) -> int:
    from rlad_megatron.atomic_write import DiskFullError  # lazy: `config` and `--help` do not load the trainer
    from rlad_megatron.refusal import refuse
    from rlad_megatron.trainer.checkpoints.run_dir import RunDirError, prepare_output_dir

    try:
        start = prepare_output_dir(config, resume=args.resume, overwrite=args.overwrite,
                                   allow_config_change=args.allow_config_change, rank0=rank0,
                                   requeued=lock.requeued)
    except RunDirError as err:
        return refuse([str(err)], command=COMMAND)
    lock.mark_running()
    if rank0:
        for note in start.notes:
            print(f"[rlad] {note}", flush=True)
    # lazy: `config` and `--help` do not load the trainer
    from rlad_megatron.console import rank_tag, send_output_to_log

    # From here on third-party output (vLLM, Megatron, torch, warnings) goes to the run's train.log, not the console.
    send_output_to_log(Path(config.trainer.output_dir) / "train.log", tag=rank_tag())
    # lazy: `config` and `--help` do not load the trainer
    from rlad_megatron.data.sources import DatasetError
    from rlad_megatron.pools.world import join_job

    try:
        # One SPMD program: with a Megatron teacher pool (teacher.placement=separate) the job's last teacher.ranks
        # ranks serve the teacher and the others train; without one every rank trains.
        if join_job(config).role == "teacher":
            from rlad_megatron.pools.teacher_rank import serve_teacher  # lazy, as above

            serve_teacher(config)
        else:
            from rlad_megatron.trainer.loop import train  # lazy, as above

            train(config, resume=start.resume, check=False)  # checked above, before the lock
    except DiskFullError as err:  # the traceback goes to train.log; the console gets one line, from one rank
        import traceback  # lazy: `config` and `--help` do not load the trainer

        traceback.print_exc()
        return refuse([str(err)], command=COMMAND)
    except DatasetError as err:  # a bad row past the first ones the checks read: the traceback goes to train.log
        import traceback  # lazy: `config` and `--help` do not load the trainer

        traceback.print_exc()
        return refuse([str(err)], command=COMMAND)
    # Everything is written and closed: spare the interpreter's final garbage collection a pass over vLLM's, Megatron's
    # and torch's objects (~3 s a process on 2 cores, at every job's end). Exit handlers still run.
    import gc

    gc.freeze()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlad-megatron", description="RL-aware distillation (RLAD) on Megatron + vLLM")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run RLAD (or a baseline) training; launch under torchrun for >1 rank")
    train.add_argument("--config", default=None, help="YAML run config (sections of rlad_megatron/config/)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in trainer.output_dir from its newest complete checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start a new run in an output_dir that holds one: the old run's files are moved to "
                            "<output_dir>.old-<time>, not deleted")
    train.add_argument("--allow-config-change", action="store_true",
                       help="resume even though the config changes the run (models, loss, data, seeds, ...)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.alpha=0.3 trainer.steps=20")
    train.set_defaults(func=_train)
    from rlad_megatron import convert  # lazy: `import rlad_megatron.cli` stays light (torch comes with convert)
    from rlad_megatron.config import cli as config_cli
    from rlad_megatron.data import cli as data_cli
    from rlad_megatron.eval import cli as eval_cli
    from rlad_megatron.eval import teacher_trust
    from rlad_megatron import launch_cli

    convert.register(sub)
    eval_cli.register(sub)
    teacher_trust.register(sub)
    config_cli.register(sub)
    data_cli.register(sub)
    launch_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("launch", "plan"):  # the launcher's own options (python -m recipes)
        from rlad_megatron import launch_cli

        return launch_cli.main(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `train --resume a=1 b=2` and `train a=1 --resume b=2`: overrides may stand on either side of a flag.
    if extra and getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-")
                                                                     for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
