"""``python -m recipes`` (and ``rlad-megatron launch | plan``): build a recipe -- a named one, or your own run config
(``--config my_run.yaml``) -- check its placement and memory plan, and launch it through NeMo-Run (or dry-run it).

    python -m recipes --list
    python -m recipes quickstart                                    # local, 2 CPU processes, tiny models
    python -m recipes math_qwen3_8b_base --plan                    # per-GPU memory by component; fits?
    python -m recipes logic_qwen3_0p6b --executor slurm --dryrun --account acct --partition batch \\
        --container-image rlad-megatron:0.1.0 trainer.steps=10 \\
        --mounts /lustre/models:/models,/lustre/data:/data,/lustre/results:/results
    python -m recipes --config my_run.yaml --nodes 2 --gpus-per-node 8 --plan           # your own run
    python -m recipes --config my_run.yaml --executor slurm --nodes 2 --account acct --partition batch
    python -m recipes --config my_run.yaml --plan --teacher-gpus 4   # teacher.placement=separate, teacher.source=vllm
    python -m recipes logic_qwen3_0p6b --config changes.yaml trainer.steps=10   # the file's keys on the recipe's
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from typing import Any, Sequence

from rlad_megatron.config import ConfigError

from recipes import RECIPES, get_recipe, prepare_quickstart_assets, recipe_names
from recipes.base import Recipe
from recipes.job_checks import file_problems, job_path, locator
from recipes.own_run import recipe_from_config, with_config_file, with_job_config_file
from recipes.shapes import describe_shape, resolve_shapes


def _parser(prog: str = "python -m recipes") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="recipe name (see --list); without one, --config is the whole run")
    p.add_argument("overrides", nargs="*", help="trainer config overrides, section.key=value")
    p.add_argument("--list", action="store_true", help="list the recipes and exit")
    p.add_argument("--config", help="YAML run config: your own run (no recipe name), or keys on top of the named "
                                    "recipe's; relative paths in it are taken from its folder")
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
    p.add_argument("--gpus-per-node", type=int, help="override the recipe's GPUs (ranks) per node (--config: "
                                                     "default 8, with --cpu 1)")
    p.add_argument("--rollout-gpus", type=int,
                   help="GPUs of the rollout engines' own (rollout.placement=disaggregated, e.g. rollout.mode=async): "
                        "one engine per learner replica, on each node's last GPUs; the learner gets the others")
    p.add_argument("--teacher-gpus", type=int,
                   help="GPUs of a teacher pool's own (teacher.placement=separate): teacher.source=vllm: one engine "
                        "per learner replica, on each node's last GPUs after the rollout engines' (default: the count "
                        "that fits); teacher.source=megatron: teacher.ranks (the default)")
    p.add_argument("--cpu", action="store_true",
                   help="--config: the job runs on CPUs (--gpus-per-node counts processes; Slurm is asked for no "
                        "GPUs; the memory plan has no GPU limit)")
    p.add_argument("--student-shape", metavar="NAME",
                   help="plan the student as this known model (e.g. Qwen3-4B) when its folder is not reachable from "
                        "this machine; by default its config.json is read")
    p.add_argument("--teacher-shape", metavar="NAME", help="the same for the teacher (e.g. Qwen3-30B-A3B)")
    p.add_argument("--no-file-checks", action="store_true",
                   help="submit without checking here that the job will find its models and data (the job still "
                        "checks them when it starts)")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--time", default="04:00:00", help="Slurm time limit (default %(default)s)")
    p.add_argument("--qos", help="Slurm QoS")
    p.add_argument("--container-image", help="container image for pyxis (see docker/README.md)")
    p.add_argument("--mounts", "--mount", action="append", default=[],
                   help="container mounts host:container, comma-separated or repeated; every path of the run "
                        "(models, data, reward file, trainer.output_dir) must lie under one")
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


def _mounts(args: argparse.Namespace) -> list[str]:
    return [m for item in args.mounts for m in item.split(",") if m]


def _in_container(args: argparse.Namespace) -> bool:
    return args.executor == "slurm" and bool(args.container_image)


def build_recipe(args: argparse.Namespace) -> tuple[Recipe, list[str]]:
    """The recipe named on the command line (or the run of ``--config``), with its arguments, layout, config file
    and overrides applied and its models' shapes (not validated); and one line per model saying its shape.

    The shapes come from the models' own config.json (``recipes.shapes``): a recipe's table shape stands only for
    the recipe's own model path, so ``model.student=...`` never plans with another model's shape."""
    if args.name is None:
        if args.arg:
            raise ConfigError("--arg sets a recipe function's argument: name the recipe, or set the key in "
                              f"{args.config}")
        recipe = recipe_from_config(args.config, args.overrides, nodes=args.nodes or 1,
                                    gpus_per_node=args.gpus_per_node or (1 if args.cpu else 8),
                                    rollout_gpus=args.rollout_gpus or 0, teacher_gpus=args.teacher_gpus or 0,
                                    cpu=args.cpu, gpu_memory=args.gpu)
        declared: dict = {}
    else:
        if args.name.endswith((".yaml", ".yml")):
            raise ConfigError(f"{args.name} is not a recipe name: give a run config as --config {args.name}")
        if args.cpu:
            raise ConfigError(f"--cpu is for your own run (--config without a recipe name); recipe {args.name} "
                              "says itself whether it needs GPUs")
        kwargs = _pairs(args.arg, "--arg")
        if args.name == "quickstart" and "student" not in kwargs:
            kwargs = {**prepare_quickstart_assets(args.workdir), **kwargs}
        try:
            recipe = get_recipe(args.name, **kwargs)
        except TypeError as err:
            raise ConfigError(f"recipe {args.name}: bad --arg ({err}). Another student or teacher with this "
                              "recipe's settings: model.student=FOLDER / model.teacher=FOLDER (their config.json is "
                              "read for the plan; --student-shape / --teacher-shape NAME where the folder is not "
                              "reachable), or your own run: --config my_run.yaml") from None
        declared = {"student": (recipe.config.model.student, recipe.student_shape),
                    "teacher": (recipe.config.model.teacher, recipe.teacher_shape) if recipe.teacher_shape else None}
        recipe = recipe.with_layout(nodes=args.nodes, gpus_per_node=args.gpus_per_node)
        recipe = (with_config_file(recipe, args.config, args.overrides) if args.config
                  else recipe.with_overrides(args.overrides))
        if args.rollout_gpus is not None:
            recipe = dataclasses.replace(recipe, rollout_gpus=args.rollout_gpus)
        if args.teacher_gpus is not None:
            recipe = dataclasses.replace(recipe, teacher_gpus=args.teacher_gpus)
        recipe = recipe.with_gpu(args.gpu)
    student, teacher = resolve_shapes(recipe.config, named={"student": args.student_shape,
                                                            "teacher": args.teacher_shape},
                                      declared=declared, locate=locator(container=_in_container(args),
                                                                        mounts=_mounts(args)))
    recipe = dataclasses.replace(recipe, student_shape=student.shape, teacher_shape=teacher and teacher.shape)
    return recipe, [describe_shape(role, shape) for role, shape in (("student", student), ("teacher", teacher))
                    if shape is not None]


def _refusal(plan) -> str:
    from rlad_megatron.memory_plan import MemoryPlanError

    try:
        plan.check()
    except MemoryPlanError as err:
        return str(err)
    return ""


def main(argv: Sequence[str] | None = None, prog: str = "python -m recipes") -> int:
    args = _parser(prog).parse_intermixed_args(argv)
    if args.name and "=" in args.name:  # `--config my_run.yaml trainer.steps=3`: an override, not a recipe name
        args.overrides, args.name = [args.name, *args.overrides], None
    if args.list or not (args.name or args.config):
        for name in recipe_names():
            fn = RECIPES[name]
            algorithm = getattr(fn, "keywords", {}).get("algorithm", "rlad" if name != "quickstart" else "")
            doc = (getattr(fn, "func", fn).__doc__ or "").strip()
            summary = doc.split(";")[0].split("\n")[0] if doc else ""
            print(f"{name:28s} {'[' + algorithm + '] ' if algorithm else ''}{summary}")
        return 0
    try:
        recipe, shapes = build_recipe(args)
        if args.requeue or args.max_restarts:
            from recipes.executors import with_auto_resume

            recipe = with_auto_resume(recipe, "--requeue" if args.requeue else "--max-restarts")
        placement = recipe.validate(check_memory=False)
        plan = recipe.memory_plan(placement)
        notes = []
        if not args.plan:
            try:
                recipe.train_args()  # the config travels on the job's command line, or in a file next to yours
            except ConfigError:
                if not args.config:
                    raise
                recipe = with_job_config_file(recipe, args.config,
                                              in_job=job_path(container=_in_container(args), mounts=_mounts(args)))
                notes.append(f"the job reads its config from {recipe.job_config} (a value of it cannot travel on "
                             "the job's command line)")
    except (ConfigError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"recipe {recipe.name}: {recipe.description}", *shapes, placement.describe(), *notes, sep="\n")
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
            refusal = _refusal(plan)
            if args.name is None:  # your own run: its plan is printed by `plan --config`
                refusal = refusal.replace("python -m recipes NAME --plan", f"rlad-megatron plan --config {args.config}")
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        print(f"warning: launching although the memory plan does not fit ({plan.peak_gib:.1f} GiB > "
              f"{plan.gpu_gib:.1f} GiB)", file=sys.stderr)
    if args.show:
        print("command: torchrun ... -m rlad_megatron.cli " + " ".join(recipe.train_args()))
        return 0
    mounts = _mounts(args)
    if not args.no_file_checks:
        problems = file_problems(recipe.config, container=_in_container(args), mounts=mounts, cuda=recipe.gpu)
        for problem in problems:
            print(f"{'warning' if args.dryrun else 'error'}: {problem}", file=sys.stderr)
        if problems and not args.dryrun:
            print("error: the job would not find these: fix them, or --no-file-checks to submit anyway",
                  file=sys.stderr)
            return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of NeMo-Run's dependencies, at import
        from recipes.executors import launch, local_executor, slurm_executor

    env = _pairs(args.env, "--env")
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
