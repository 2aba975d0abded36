"""Step throughput of the trainer on workload W1, with the time of each phase, for grpo / rlad / kdrl at TP=1 and 2.

Workload W1 (fixed; issue 10):
- 64 prompts ``a+b=`` with two 3-digit operands (seed 0); reward 1.0 when the completion's leading digits equal the
  sum, else 0.0 (task ``sum_prefix``).
- Student: Llama, 4 layers, hidden 256, 4 heads (head dim 64), FFN 688, char tokenizer, random init (seed 1):
  ~3.2M parameters. Teacher (rlad, kdrl): 8 layers, hidden 384, 6 heads, FFN 1024 (seed 2): ~14M. Both written
  as Hugging Face checkpoints and loaded through the trainer's normal path.
- Per step: 8 prompts x G=8, at most 32 new tokens, temperature 1.0, one optimizer step per rollout batch, no
  reference model, lr 1e-5, fp32, AdamW; groups with all-equal rewards are trained on (equal work).
- Learner micro-batches (``--micro-batch``): by default a token budget of 4,096 tokens
  (``trainer.max_tokens_per_micro_batch``), which holds the whole step (64 sequences of ~45 tokens) in one
  training and one teacher micro-batch, as the HF reference trains; ``--micro-batch 8`` gives the trainer's
  default fixed micro-batches of 8 sequences (8 forward/backward passes per step).

Each (mode, TP) runs the real trainer exactly as a user launches it (``python -m rlad_megatron.launch_local
--nproc-per-node TP -m rlad_megatron.cli train --config ...``: vLLM engine, Megatron learner, weight sync; a baseline
checkout older than launch_local: ``torchrun --standalone``), ``--warmup`` + ``--steps``
steps; the warm-up steps are dropped and the rest read from ``metrics.jsonl``. Reported per mode: the median step
time, generated tokens per second (completion tokens up to and including the first eos, summed over the measured
steps, over their summed step time), peak RSS (max over ranks), and the median time of each phase.

``--baseline-src DIR`` runs the same workload from another checkout of the package too (e.g. a ``git worktree`` of
an earlier commit), interleaved run by run with this one (order alternating), so that a change is judged against
its baseline under the same machine load; the final lines are this checkout's.

``--rollout sync,async`` runs each (mode, TP) with synchronous rollouts (today's default: the engine in the learner's
process, generation then training) and asynchronous ones (``rollout.mode=async``, ``max_staleness=1``: the engine in
its own process generates batch t + 1 while the learner trains on batch t; on CPU one core each: the engine process
pinned to one, the learner on one thread, ``rollout.engine_cpus=1``), interleaved run by run. In the asynchronous
runs of rlad and kdrl the teacher is out of the learner's process by default (``--async-teacher``, default
``vllm``: ``teacher.placement=separate`` with the teacher in a vLLM engine process of its own, on CPU pinned to the
rollout engine's core, so that generation and teacher prefill share one core and the learner keeps the other;
``megatron``: the teacher on a rank of its own, a second torchrun process; ``colocated``: in the learner's process
as in the synchronous runs). The synchronous runs keep the colocated Megatron teacher (today's default).

For every run with a pool apart, the step's timeline by pool (``timeline/*``: each pool's busy seconds and idle
fraction, medians) is printed, and the three-pool plan's prediction (``rlad_megatron.memory_plan.pools``: the step
time of the one-batch-ahead schedule from the pools' per-token costs, measured in the same run) is compared with the
measured idle fractions: ``step: mode=<m> tp=<n> rollout=async plan_idle_gap_max=<largest |predicted - measured|>``.

Final lines: ``step: mode=<m> tp=<n> rollout=<r> step_s=<x> tokens_per_s=<y> peak_rss_mb=<z>`` per mode, TP and
rollout mode, then ``step: teacher_overhead_ratio=<rlad step_s / grpo step_s>`` (at the first TP and rollout mode
given), with both rollout modes ``step: mode=<m> tp=<n> async_speedup=<async tokens/s / sync tokens/s>``, then
(unless ``--no-hf-reference``) ``step: mode=<m> hf_ratio=<ours tokens/s / reference tokens/s>`` per mode (ours at the
first TP given, synchronous rollouts).

The reference (``bench/hf_reference.py``) is a plain single-process Hugging Face trainer of our own doing W1's work
(``model.generate``, the GRPO / on-policy-distillation loss, AdamW; torch 2 threads), run in the same rounds,
interleaved with ours, so that the ratio is measured under the same machine load.

Run: ``.venv/bin/python bench/step.py [--modes grpo,rlad,kdrl --tp 1,2 --steps 6 --warmup 1]``.

Workload W3 (``--workload w3``, issue 31): W1's prompts, group shape (8 prompts x G=8) and task with a real
vocabulary: Qwen3-shaped models with 151,936 embedding rows, the tokenizer the character tokenizer filled to that
size with single filler characters (``build_char_tokenizer(size=...)``; the sum task's alphabet keeps its ids).
Student: Qwen3, 4 layers, hidden 256, 4 heads / 2 KV heads (head dim 64), FFN 768, tied embeddings (seed 1):
~42M parameters, 39M of them the embedding. Teacher: Qwen3, 8 layers, hidden 384, 6 / 2 heads, FFN 1024, untied
(seed 2): ~127M. 128-token responses (a random model rarely stops: ~8.8K tokens per step), fp32, W1's 4,096-token
budget (three training micro-batches; the fused output head, the trainer's default, holds no logits, so the budget
bounds the layers' activations only: one 8.8K-token micro-batch doubles the learner's step peak, 1.2 GB vs 0.6 GB of
tensors). The HF reference runs the same step as TRL's GRPOTrainer saves memory (micro-batches of 8 sequences,
``--hf-micro-batch``; a per-sequence log-sum-exp: see ``bench/hf_reference.py``); ``--hf-micro-batch 0`` trains on
the whole step at once as in W1 (the full logits of ~8.8K tokens x 151,936 columns, several copies: ~20 GB). Final
lines, per mode (ours at the first TP given): ``w3: mode=<m> hf_ratio=<ours / hf tokens/s> mem_ratio=<ours / hf
peak RSS>``. ``--max-new-tokens`` shortens the responses for a quick check.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rlad_megatron import launch_local

REPO = Path(__file__).resolve().parents[1]

STUDENT = dict(family="llama", num_layers=4, hidden_size=256, intermediate_size=688, num_heads=4, num_kv_heads=4)
TEACHER = dict(family="llama", num_layers=8, hidden_size=384, intermediate_size=1024, num_heads=6, num_kv_heads=6)
PHASES = (("generation", "time/generation"), ("teacher", "time/teacher"), ("old_logprobs", "time/old_logprobs"),
          ("train", "time/train"), ("sync", "time/sync"), ("other", "time/other"))


def prepare(root: Path) -> dict[str, str]:
    """Write the W1 student, teacher and prompt file under ``root`` (reused when present)."""
    from rlad_megatron.tasks.sum_prefix.task import generate_sum_records
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    paths = {"student": root / "student", "teacher": root / "teacher", "train": root / "train.jsonl"}
    if not (paths["student"] / "config.json").exists():
        make_tiny_hf_model(paths["student"], seed=1, **STUDENT)
    if not (paths["teacher"] / "config.json").exists():
        make_tiny_hf_model(paths["teacher"], seed=2, **TEACHER)
    if not paths["train"].exists():
        paths["train"].write_text("".join(json.dumps(r) + "\n" for r in generate_sum_records(64, seed=0)))
    return {k: str(v) for k, v in paths.items()}


W1_TOKEN_BUDGET = 4096
W3_VOCAB = 151936
W3_STUDENT = dict(family="qwen3", num_layers=4, hidden_size=256, intermediate_size=768, num_heads=4, num_kv_heads=2,
                  head_dim=64, tie_word_embeddings=True)
W3_TEACHER = dict(family="qwen3", num_layers=8, hidden_size=384, intermediate_size=1024, num_heads=6,
                  num_kv_heads=2, head_dim=64)
W3_NEW_TOKENS = 128
W3_TOKEN_BUDGET = W1_TOKEN_BUDGET
#: The HF reference's micro-batch for W3 (TRL's default per_device_train_batch_size); it also uses lean log-probs.
W3_HF_MICRO_BATCH = 8


def prepare_w3(root: Path) -> dict[str, str]:
    """Write the W3 student, teacher (Qwen3 shapes, 151,936 rows) and W1's prompt file under ``root``."""
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer
    from rlad_megatron.tasks.sum_prefix.task import generate_sum_records
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    paths = {"student": root / "student", "teacher": root / "teacher", "train": root / "train.jsonl"}
    tokenizer = None
    for name, shape, seed in (("student", W3_STUDENT, 1), ("teacher", W3_TEACHER, 2)):
        if not (paths[name] / "config.json").exists():
            tokenizer = tokenizer or build_char_tokenizer(size=W3_VOCAB)
            make_tiny_hf_model(paths[name], seed=seed, tokenizer=tokenizer, vocab_size=W3_VOCAB, **shape)
    if not paths["train"].exists():
        paths["train"].write_text("".join(json.dumps(r) + "\n" for r in generate_sum_records(64, seed=0)))
    return {k: str(v) for k, v in paths.items()}


ASYNC_ROLLOUT = {"mode": "async", "max_staleness": 1, "placement": "disaggregated"}
#: --async-teacher: the teacher section of the asynchronous runs of rlad/kdrl, and the extra torchrun ranks it takes.
ASYNC_TEACHERS: dict[str, tuple[dict, int]] = {
    "vllm": ({"source": "vllm", "placement": "separate"}, 0),
    "megatron": ({"source": "megatron", "placement": "separate", "ranks": 1}, 1),
    "colocated": ({}, 0),
}


def w1_config(paths: dict[str, str], mode: str, tp: int, steps: int, output_dir: Path, rollout: str = "sync",
              engine_cpus: int = 1, micro_batch: str = "budget", async_teacher: str = "vllm") -> dict:
    """The trainer config of W1 for one algorithm, tensor-parallel size and rollout mode (sync: today's default);
    ``micro_batch``: "budget" (a 4,096-token budget: the step in one micro-batch) or a fixed size ("8");
    ``async_teacher``: where an asynchronous run's teacher lives (:data:`ASYNC_TEACHERS`)."""
    config = {
        "model": {"student": paths["student"], "teacher": paths["teacher"], "params_dtype": "float32"},
        "parallel": {"tensor_parallel": tp},
        "data": {"task": "sum_prefix", "train_files": [paths["train"]], "prompts_per_step": 8,
                 "max_prompt_tokens": 32},
        "rollout": {"group_size": 8, "max_new_tokens": 32, "temperature": 1.0, "top_p": 1.0, "kv_cache_mb": 64},
        "optim": {"lr": 1e-5, "min_lr": 1e-5, "warmup_steps": 0, "weight_decay": 0.0},
        "loss": {"algorithm": mode},
        "trainer": {"steps": steps, "updates_per_batch": 1, "skip_uniform_groups": False, "output_dir": str(output_dir),
                    "seed": 7, "export_hf": False},
    }
    if micro_batch == "budget":
        config["trainer"]["max_tokens_per_micro_batch"] = W1_TOKEN_BUDGET
    else:
        config["trainer"]["micro_batch_size"] = int(micro_batch)
    if rollout == "async":
        config["rollout"].update(ASYNC_ROLLOUT)
        if not _has_cuda():  # the engine process and the learner: one core each (0: neither pinned)
            config["rollout"]["engine_cpus"] = engine_cpus
        if mode in ("rlad", "kdrl") and ASYNC_TEACHERS[async_teacher][0]:
            config["teacher"] = dict(ASYNC_TEACHERS[async_teacher][0])
    return config


def w3_config(paths: dict[str, str], mode: str, tp: int, steps: int, output_dir: Path,
              max_new_tokens: int = W3_NEW_TOKENS) -> dict:
    """W1's trainer config (its 4,096-token budget) with W3's models and 128-token responses."""
    config = w1_config(paths, mode, tp, steps, output_dir)
    config["rollout"].update(max_new_tokens=max_new_tokens)  # 64 MB of KV cache hold the step's ~9K tokens
    return config


def processes(config: dict, tp: int) -> int:
    """torchrun's ranks: the learner's, and a Megatron teacher pool's."""
    return tp + int(config.get("teacher", {}).get("ranks", 0))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_once(config: dict, tp: int, workdir: Path, src: Path | None, timeout: float,
             threads: int | None = None) -> list[dict]:
    """Launch the trainer as a user would; return its metrics rows. ``src``: import the package from there;
    ``threads``: OMP_NUM_THREADS of every rank (None: what torchrun chooses)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)  # whatever torchrun chooses for a user (1 per rank when nproc > 1)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if src is not None:  # PYTHONPATH comes before the editable install of this checkout
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    args = ["train", "--config", str(config_path)]
    if src is None or (src / "rlad_megatron" / "launch_local.py").exists():
        # every socket on the loopback interface
        cmd = launch_local.command(processes(config, tp), "rlad_megatron.cli", args)
    else:  # a baseline checkout older than launch_local
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes(config, tp)}",
               "-m", "rlad_megatron.cli", *args]
    log_path = workdir / "train.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=str(workdir), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"trainer failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    rows = [json.loads(line) for line in (Path(config["trainer"]["output_dir"]) / "metrics.jsonl").read_text()
            .splitlines() if line.strip()]
    return rows


def run_hf_reference(w1: Path, mode: str, steps: int, warmup: int, timeout: float,
                     threads: int = 2, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """One run of the single-process HF reference trainer (``bench/hf_reference.py``) in its own process
    (``extra``: more of its arguments)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("OMP_NUM_THREADS", None)  # the reference sets torch's threads itself (2, as the TRL runs)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, str(REPO / "bench" / "hf_reference.py"), "--w1", str(w1), "--mode", mode,
           "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads), "--json", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"HF reference failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], warmup: int) -> dict[str, float]:
    """Medians over the measured steps (after ``warmup``), tokens per second over their summed time."""
    measured = [r for r in rows if r["step"] > warmup]
    if not measured:
        raise RuntimeError(f"no measured steps (got {len(rows)} rows, warm-up {warmup})")
    med = statistics.median
    out = {"step_s": med(r["time/step"] for r in measured),
           "tokens_per_s": sum(r["rollout/generated_tokens"] for r in measured) / sum(r["time/step"] for r in measured),
           "peak_rss_mb": max(r["memory/peak_rss_mb"] for r in measured),
           "tokens_per_step": med(r["rollout/generated_tokens"] for r in measured),
           "reward": statistics.mean(r["reward/mean"] for r in measured)}
    for name, key in PHASES:
        out[name] = med(r[key] for r in measured)
    for pool in ("learner", "rollout", "teacher"):  # idle: over the measured steps' summed time
        if f"timeline/{pool}_busy" in measured[0]:
            out[f"{pool}_busy"] = med(r[f"timeline/{pool}_busy"] for r in measured)
            out[f"{pool}_idle"] = 1 - (sum(r[f"timeline/{pool}_busy"] for r in measured)
                                       / sum(r["time/step"] for r in measured))
    return out


def plan_check(config: dict, rows: list[dict], warmup: int, tp: int) -> dict[str, tuple[float, float]]:
    """Per pool apart: (predicted, measured) idle fraction. The prediction is the three-pool plan's step-time model
    (rlad_megatron.memory_plan.pools) fed with the per-token costs this run measured; one process per pool."""
    from rlad_megatron.config import run_config_from_dict
    from rlad_megatron.memory_plan.pools import PoolLayout, measured_costs, predict

    run = run_config_from_dict(config)
    teacher = 1 if run.teacher.placement == "separate" and "timeline/teacher_busy" in rows[-1] else 0
    layout = PoolLayout(tp, 1 if run.rollout.placement == "disaggregated" else 0, teacher)
    costs, work = measured_costs(rows, layout, warmup=warmup)
    predicted = predict(run, layout, costs, work)
    measured = summarise(rows, warmup)
    return {pool: (predicted.idle[pool], measured[f"{pool}_idle"]) for pool in predicted.busy_s
            if predicted.apart[pool] and f"{pool}_idle" in measured}


def _fmt_pools(s: dict[str, float]) -> str:
    return " ".join(f"{pool}_busy={s[f'{pool}_busy']:.3f} {pool}_idle={s[f'{pool}_idle']:.2f}"
                    for pool in ("learner", "rollout", "teacher") if f"{pool}_busy" in s)


def _fmt_breakdown(label: str, s: dict[str, float]) -> str:
    parts = " ".join(f"{name}={s[name]:.3f}" for name, _ in PHASES)
    return (f"{label} step_s={s['step_s']:.3f} [{parts}] tokens/step={s['tokens_per_step']:.0f} "
            f"reward={s['reward']:.3f} peak_rss_mb={s['peak_rss_mb']:.0f}")


def _fmt_hf(label: str, h: dict[str, float]) -> str:
    parts = " ".join(f"{name}={h[name]:.3f}" for name in ("generation", "teacher", "train", "other"))
    return (f"{label} step_s={h['step_s']:.3f} [{parts}] tokens/step={h['tokens_per_step']:.0f} "
            f"tokens_per_s={h['tokens_per_s']:.1f} peak_rss_mb={h.get('peak_rss_mb', float('nan')):.0f}")


def _pool_hf(runs: list[dict[str, float]]) -> dict[str, float]:
    """Rounds of the reference pooled as the trainer's are: medians of the per-run medians, tokens/s over all."""
    med = statistics.median
    out = {k: med(r[k] for r in runs) for k in ("step_s", "generation", "teacher", "train", "other",
                                                 "tokens_per_step")}
    out["tokens_per_s"] = med(r["tokens_per_s"] for r in runs)
    out["peak_rss_mb"] = max(r.get("peak_rss_mb", float("nan")) for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="w1", choices=["w1", "w3"],
                        help="w1: tiny char-vocabulary models; w3: Qwen3 shapes with a 151,936-row vocabulary")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="W3: response length (default 128)")
    parser.add_argument("--hf-micro-batch", type=int, default=W3_HF_MICRO_BATCH,
                        help="W3: sequences per forward/backward of the HF reference (0: the whole step, as W1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="SECTION.KEY=VALUE for our trainer's config (repeatable), "
                             "e.g. trainer.fused_logprobs=false")
    parser.add_argument("--modes", default="grpo,rlad,kdrl")
    parser.add_argument("--tp", default="1,2", help="tensor-parallel sizes (one gloo process per TP rank)")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="runs per (mode, TP[, checkout]); medians pool them")
    parser.add_argument("--rollout", default="sync", help="rollout modes to run, interleaved: sync, async or both")
    parser.add_argument("--async-teacher", choices=sorted(ASYNC_TEACHERS), default="vllm",
                        help="where the asynchronous runs of rlad/kdrl keep the teacher (default: a vLLM engine "
                             "process of its own)")
    parser.add_argument("--engine-cpus", type=int, default=1,
                        help="async on CPU: rollout.engine_cpus (cores of the engine process, the learner gets the "
                             "rest; 0: no pinning)")
    parser.add_argument("--micro-batch", default="budget",
                        help="learner micro-batches: 'budget' (4,096 tokens: the W1 step in one) or a fixed size")
    parser.add_argument("--baseline-src", default=None, help="another checkout to compare against, interleaved")
    parser.add_argument("--workdir", default=None, help="keep models, configs and logs here (default: temporary)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per run (default 900; W3: 3600, the HF reference generates slowly)")
    parser.add_argument("--no-hf-reference", dest="hf_reference", action="store_false",
                        help="skip the single-process HF reference trainer (bench/hf_reference.py)")
    parser.add_argument("--hf-threads", type=int, default=2, help="torch threads of the HF reference (the issue's: 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS per rank (default: torchrun's choice: unset at TP=1, 1 per rank above)")
    args = parser.parse_args()
    modes, tps = args.modes.split(","), [int(t) for t in args.tp.split(",")]
    rollouts = args.rollout.split(",")
    if set(rollouts) - {"sync", "async"}:
        parser.error(f"--rollout {args.rollout!r}: give sync, async or sync,async")
    if "grpo" not in modes or "rlad" not in modes:
        print("note: teacher_overhead_ratio needs both grpo and rlad", file=sys.stderr)
    sources: list[tuple[str, Path | None]] = [("this", None)]
    if args.baseline_src:
        sources.append(("base", Path(args.baseline_src).resolve()))

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_step_")
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    w3 = args.workload == "w3"
    args.timeout = args.timeout or (3600 if w3 else 900)
    data_dir = root / args.workload
    paths = prepare_w3(data_dir) if w3 else prepare(data_dir)
    new_tokens = args.max_new_tokens or (W3_NEW_TOKENS if w3 else 32)
    hf_extra: tuple[str, ...] = ()
    if w3:
        hf_extra = ("--lean-logprobs", "--max-new-tokens", str(new_tokens))
        hf_extra += ("--micro-batch", str(args.hf_micro_batch)) if args.hf_micro_batch else ()
    rows: dict[tuple[str, str, int, str], list[dict]] = {}
    configs: dict[tuple[str, str, int, str], dict] = {}
    hf_runs: dict[str, list[dict[str, float]]] = {}
    start = time.perf_counter()
    run = 0
    for r in range(args.rounds):
        for tp in tps:
            for mode in modes:
                order = [(label, src, ro) for ro in rollouts for label, src in sources]
                order = order if run % 2 == 0 else order[::-1]
                run += 1
                for label, src, ro in order:
                    out = root / f"{label}-{mode}-tp{tp}-{ro}-r{r}"
                    if w3:
                        config = w3_config(paths, mode, tp, args.warmup + args.steps, out / "run", new_tokens)
                    else:
                        config = w1_config(paths, mode, tp, args.warmup + args.steps, out / "run", ro,
                                           args.engine_cpus, args.micro_batch, args.async_teacher)
                    for item in args.overrides:
                        key, _, value = item.partition("=")
                        section, _, name = key.partition(".")
                        config.setdefault(section, {})[name] = yaml.safe_load(value)
                    configs[(label, mode, tp, ro)] = config
                    got = run_once(config, tp, out, src, args.timeout, args.threads)
                    rows.setdefault((label, mode, tp, ro), []).extend(
                        got)
                    summary = summarise(got, args.warmup)
                    print(f"[{time.perf_counter() - start:6.0f}s] load={os.getloadavg()[0]:.2f} "
                          + _fmt_breakdown(f"{label} mode={mode} tp={tp} rollout={ro} round={r}", summary),
                          flush=True)
                if args.hf_reference and tp == tps[0]:  # right after ours, under the same load
                    hf = run_hf_reference(data_dir, mode, args.steps, args.warmup, args.timeout, args.hf_threads,
                                          hf_extra)
                    hf_runs.setdefault(mode, []).append(hf)
                    print(f"[{time.perf_counter() - start:6.0f}s] load={os.getloadavg()[0]:.2f} "
                          + _fmt_hf(f"hf   mode={mode} round={r}", hf), flush=True)

    results = {key: summarise(value, args.warmup) for key, value in rows.items()}
    print(f"{args.workload.upper()}: 8 prompts x G=8, <={new_tokens} new tokens, micro-batches "
          f"{W3_TOKEN_BUDGET if w3 else args.micro_batch}, {args.steps} measured steps "
          f"after {args.warmup} warm-up, "
          f"{args.rounds} round(s); load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"total {time.perf_counter() - start:.0f} s")
    print("breakdown: median seconds per step of each phase")
    for tp in tps:
        for mode in modes:
            for ro in rollouts:
                for label, _ in sources:
                    print(_fmt_breakdown(f"  {label:<4} mode={mode:<4} tp={tp} rollout={ro}",
                                         results[(label, mode, tp, ro)]))
                if len(sources) > 1:
                    a, b = results[("this", mode, tp, ro)], results[("base", mode, tp, ro)]
                    print(f"  speed-up mode={mode} tp={tp} rollout={ro}: step_s base/this = "
                          f"{b['step_s'] / a['step_s']:.2f}x")
    for tp in tps:
        for mode in modes:
            for ro in rollouts:
                s = results[("this", mode, tp, ro)]
                print(f"step: mode={mode} tp={tp} rollout={ro} step_s={s['step_s']:.3f} "
                      f"tokens_per_s={s['tokens_per_s']:.1f} peak_rss_mb={s['peak_rss_mb']:.0f}")
    if "grpo" in modes and "rlad" in modes:
        tp, ro = tps[0], rollouts[0]
        ratio = results[("this", "rlad", tp, ro)]["step_s"] / results[("this", "grpo", tp, ro)]["step_s"]
        print(f"step: teacher_overhead_ratio={ratio:.3f}")
    if set(rollouts) == {"sync", "async"}:
        for tp in tps:
            for mode in modes:
                speedup = (results[("this", mode, tp, "async")]["tokens_per_s"]
                           / results[("this", mode, tp, "sync")]["tokens_per_s"])
                print(f"step: mode={mode} tp={tp} async_speedup={speedup:.3f}")
    print("timeline: medians per step of each pool's busy seconds and idle fraction")
    for key, s in results.items():
        if key[0] == "this":
            print(f"  mode={key[1]:<4} tp={key[2]} rollout={key[3]}: {_fmt_pools(s)}")
    for tp in tps:
        for mode in modes:
            if "async" not in rollouts:
                continue
            key = ("this", mode, tp, "async")
            check = plan_check(configs[key], rows[key], args.warmup, tp)
            for pool, (predicted, measured) in check.items():
                print(f"step: mode={mode} tp={tp} rollout=async pool={pool} idle_predicted={predicted:.3f} "
                      f"idle_measured={measured:.3f}")
            if check:
                gap = max(abs(p - m) for p, m in check.values())
                print(f"step: mode={mode} tp={tp} rollout=async plan_idle_gap_max={gap:.3f}")
    if hf_runs:
        tp, ro = tps[0], ("sync" if "sync" in rollouts else rollouts[0])
        print(f"reference: single-process HF trainer (bench/hf_reference.py), ours at tp={tp}; ratios ours/hf "
              "(tokens/s: >1 means ours is faster)")
        for mode in modes:
            h = _pool_hf(hf_runs[mode])
            print(_fmt_hf(f"  hf   mode={mode:<4}", h))
            for label, _ in sources:
                s = results[(label, mode, tp, ro)]
                print(f"  {label:<4} mode={mode:<4} ours/hf: tokens_per_s {s['tokens_per_s'] / h['tokens_per_s']:.3f} "
                      f"step_s {s['step_s'] / h['step_s']:.3f}")
        for mode in modes:
            h = _pool_hf(hf_runs[mode])
            s = results[("this", mode, tp, ro)]
            if w3:
                print(f"  w3 mode={mode:<4} peak RSS ours {s['peak_rss_mb']:.0f} MB, hf {h['peak_rss_mb']:.0f} MB")
        for mode in modes:
            h = _pool_hf(hf_runs[mode])
            s = results[("this", mode, tp, ro)]
            if w3:
                print(f"w3: mode={mode} hf_ratio={s['tokens_per_s'] / h['tokens_per_s']:.3f} "
                      f"mem_ratio={s['peak_rss_mb'] / h['peak_rss_mb']:.3f}")
            else:
                print(f"step: mode={mode} hf_ratio={s['tokens_per_s'] / h['tokens_per_s']:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
