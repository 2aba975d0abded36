"""``python -m recipes``: build a recipe, check its placement, and launch it through NeMo-Run (or dry-run it).

    python -m recipes --list
    python -m recipes quickstart                                    # local, 2 CPU processes, tiny models
    python -m recipes math_qwen3_8b_base --plan                    # per-GPU memory by component; fits?
    python -m recipes logic_qwen3_0p6b --executor slurm --dryrun --account acct --partition batch \\
        --container-image rlad-megatron:0.1.0 --mounts /lustre/models:/models,/lustre/data:/data trainer.steps=10
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from rlad_megatron.config import ConfigError

from recipes import RECIPES, get_recipe, prepare_quickstart_assets, recipe_names
from recipes.base import Recipe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="recipe name (see --list)")
    p.add_argument("overrides", nargs="*", help="trainer config overrides, section.key=value")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--show", action="store_true", help="print the placement and the trainer command, launch nothing")
    p.add_argument("--plan", action="store_true",
                   help="print the per-GPU memory plan by component (and whether it fits), launch nothing")
    p.add_argument("--gpu", help="GPU the memory plan checks against: h100, h200 or a size in GiB (default: the "
                                 "recipe's)")
    p.add_argument("--ignore-memory-plan", action="store_true",
                   help="launch even when the memory plan says the run does not fit the GPU")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--dryrun", action="store_true", help="render the job (the sbatch script on Slurm), submit nothing")
    p.add_argument("--detach", action="store_true", help="return once the job is submitted")
    p.add_argument("--nodes", type=int, help="override the recipe's node count")
    p.add_argument("--gpus-per-node", type=int, help="override the recipe's GPUs (ranks) per node")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--time", default="04:00:00", help="Slurm time limit (default %(default)s)")
    p.add_argument("--qos", help="Slurm QoS")
    p.add_argument("--container-image", help="container image for pyxis (see docker/README.md)")
    p.add_argument("--mounts", action="append", default=[],
                   help="container mounts host:container, comma-separated or repeated")
    p.add_argument("--requeue", action="store_true",
                   help="Slurm: let the job be requeued (preemption, node failure) and resume by itself from its "
                        "newest checkpoint (sets trainer.resume=auto; needs trainer.save_every)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="local: torchrun restarts the ranks up to N times after one fails, and the trainer resumes "
                        "from its newest checkpoint (sets trainer.resume=auto; needs trainer.save_every)")
    p.add_argument("--job-dir", help="with --ssh-host: where NeMo-Run puts job files on the cluster (without it, "
                        "job files stay under $NEMORUN_HOME/experiments: set NEMORUN_HOME to move them)")
    p.add_argument("--ssh-host", help="submit through SSH to this login node")
    p.add_argument("--ssh-user", help="user for --ssh-host")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment variable")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword argument of the recipe function (e.g. max_response=2048, model_root=/models)")
    p.add_argument("--workdir", default="runs/quickstart_assets",
                   help="quickstart: where the tiny models and data are created (default %(default)s)")
    return p


def _pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{what} {item!r}: expected NAME=VALUE")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if what == "--arg" else value
    return out


def build_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe named on the command line, with its arguments, layout and overrides applied (not validated)."""
    kwargs = _pairs(args.arg, "--arg")
    if args.name == "quickstart" and "student" not in kwargs:
        kwargs = {**prepare_quickstart_assets(args.workdir), **kwargs}
    try:
        recipe = get_recipe(args.name, **kwargs)
    except TypeError as err:
        raise ConfigError(f"recipe {args.name}: bad --arg ({err})") from None
    recipe = recipe.with_layout(nodes=args.nodes, gpus_per_node=args.gpus_per_node).with_overrides(args.overrides)
    return recipe.with_gpu(args.gpu)


def _refusal(plan) -> str:
    from rlad_megatron.memory_plan import MemoryPlanError

    try:
        plan.check()
    except MemoryPlanError as err:
        return str(err)
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    if args.list or not args.name:
        for name in recipe_names():
            fn = RECIPES[name]
            algorithm = getattr(fn, "keywords", {}).get("algorithm", "rlad" if name != "quickstart" else "")
            doc = (getattr(fn, "func", fn).__doc__ or "").strip()
            summary = doc.split(";")[0].split("\n")[0] if doc else ""
            print(f"{name:28s} {'[' + algorithm + '] ' if algorithm else ''}{summary}")
        return 0
    try:
        recipe = build_recipe(args)
        if args.requeue or args.max_restarts:
            from recipes.executors import with_auto_resume

            recipe = with_auto_resume(recipe, "--requeue" if args.requeue else "--max-restarts")
        placement = recipe.validate(check_memory=False)
        plan = recipe.memory_plan(placement)
    except (ConfigError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"recipe {recipe.name}: {recipe.description}\n{placement.describe()}")
    if args.plan:
        print(plan.describe() if plan is not None else "memory plan: the recipe gives no model shapes")
        pools = {name: p for name, p in recipe.pool_plans(placement).items() if name != "learner"}
        for name, pool_plan in pools.items():
            print(f"{name} pool: " + pool_plan.describe())
        balance = recipe.balance(placement)
        if balance:
            print(balance)
        fits = (plan is None or plan.fits) and all(p.fits for p in pools.values())
        return 0 if fits else 1
    if recipe.launch_blocker():
        print(f"error: {recipe.launch_blocker()}", file=sys.stderr)
        return 2
    if plan is not None and recipe.gpu and not plan.fits:
        if not args.ignore_memory_plan:
            print(f"error: {_refusal(plan)}", file=sys.stderr)
            return 2
        print(f"warning: launching although the memory plan does not fit ({plan.peak_gib:.1f} GiB > "
              f"{plan.gpu_gib:.1f} GiB)", file=sys.stderr)
    if args.show:
        print("command: torchrun ... -m rlad_megatron.cli " + " ".join(recipe.train_args()))
        return 0
    from recipes.executors import launch, local_executor, slurm_executor

    env = _pairs(args.env, "--env")
    mounts = [m for item in args.mounts for m in item.split(",") if m]
    try:
        if args.executor == "local":
            executor = local_executor(recipe, env=env)
        else:
            executor = slurm_executor(recipe, account=args.account or "", partition=args.partition, time=args.time,
                                      container_image=args.container_image, container_mounts=mounts,
                                      job_dir=args.job_dir, ssh_host=args.ssh_host, ssh_user=args.ssh_user,
                                      env=env, qos=args.qos, requeue=args.requeue)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = launch(recipe, executor, dryrun=args.dryrun, detach=args.detach, max_restarts=args.max_restarts,
                        check_memory=not args.ignore_memory_plan)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"experiment directory: {result['experiment_dir']}")
    states = {task: info.get("status") for task, info in (result["status"] or {}).items()}
    if states:
        print(f"status: {states}")
    for log in result.get("logs", []):
        print(f"log: {log}")
    failed = [t for t, s in states.items() if str(s).upper().split(".")[-1] not in ("SUCCEEDED", "RUNNING", "SUBMITTED")]
    return 1 if failed else 0
