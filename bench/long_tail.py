"""Workload W2 (issue 15): one learner-only RLAD step on long-tailed response lengths, today's fixed padded
micro-batches against token-budget micro-batches, in the same run.

W2 (fixed):
- 64 sequences: a 64-token prompt and a response whose length is drawn from a lognormal (median 192, sigma 1.0),
  rounded and clipped to 16..2,048 tokens (numpy seed 0); token ids, engine log-probs and rewards random (seed 0),
  8 responses per prompt group, GRPO advantages per group.
- The W1 student (Llama, 4 layers, hidden 256, 4 heads, FFN 688; seed 1) and teacher (8 layers, hidden 384, 6 heads,
  FFN 1024; seed 2), both with a 32,000-token vocabulary, fp32, loaded through the trainer's normal HF path.
- One RLAD step (alpha 0.5, one update per batch): the teacher's log-probs of every token, then the student's
  forward/backward and one Adam step. No generation.
- padded: micro-batches of 8 sequences, all padded to the batch's longest (``trainer.micro_batch_size=8``, today's
  path). budget: ``trainer.max_tokens_per_micro_batch=4096`` for the update and the same 4,096 for the teacher's
  forward (``max_tokens_per_forward_micro_batch``): sorted by length, each micro-batch padded to its own longest.
  packed (a detail line only, ``--packed``): the same budget with ``trainer.sequence_packing`` (CPU: block-diagonal
  mask over rows of up to 4,096 tokens).

Each path runs in a fresh process (one gloo rank), so that its peak memory is its own: the peak is the process's
high-water resident set (VmHWM) during the step, reset just before it (``/proc/self/clear_refs``), so it includes
the models, optimizer state and libraries as a device's peak would. Time is the step's wall time.
``loss_rel_diff`` compares the two paths' loss (the sum of the micro-batch shares: the global-batch objective).

Last line: ``long_tail: padded_s=<x> budget_s=<y> speedup=<x/y> padded_peak_mb=<a> budget_peak_mb=<b>
mem_ratio=<b/a> loss_rel_diff=<d>``.

Run: ``.venv/bin/python bench/long_tail.py [--workdir DIR]`` (about 5 minutes on 2 CPU cores; ~8 GB at peak).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = 32_000
STUDENT = dict(family="llama", num_layers=4, hidden_size=256, intermediate_size=688, num_heads=4, num_kv_heads=4)
TEACHER = dict(family="llama", num_layers=8, hidden_size=384, intermediate_size=1024, num_heads=6, num_kv_heads=6)
SEQUENCES, GROUP, PROMPT = 64, 8, 64
MEDIAN, SIGMA, MIN_LEN, MAX_LEN = 192, 1.0, 16, 2048
PATHS = {"padded": {"micro_batch_size": 8},
         "budget": {"max_tokens_per_micro_batch": 4096, "max_tokens_per_forward_micro_batch": 4096},
         "packed": {"max_tokens_per_micro_batch": 4096, "max_tokens_per_forward_micro_batch": 4096,
                    "sequence_packing": True}}


def prepare(root: Path) -> dict[str, str]:
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    paths = {"student": root / "student", "teacher": root / "teacher"}
    if not (paths["student"] / "config.json").exists():
        make_tiny_hf_model(paths["student"], seed=1, vocab_size=VOCAB, max_position_embeddings=4096, **STUDENT)
    if not (paths["teacher"] / "config.json").exists():
        make_tiny_hf_model(paths["teacher"], seed=2, vocab_size=VOCAB, max_position_embeddings=4096, **TEACHER)
    return {k: str(v) for k, v in paths.items()}


def response_lengths() -> list[int]:
    import numpy as np

    rng = np.random.default_rng(0)
    draws = rng.lognormal(mean=float(np.log(MEDIAN)), sigma=SIGMA, size=SEQUENCES)
    return [int(x) for x in np.clip(np.rint(draws), MIN_LEN, MAX_LEN)]


def w2_batch():
    """The W2 batch (identical in both processes)."""
    import torch

    from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
    from rlad_megatron.loss import group_advantages

    g = torch.Generator().manual_seed(0)
    lengths = response_lengths()
    prompts = [torch.randint(3, VOCAB, (PROMPT,), generator=g).tolist() for _ in range(SEQUENCES // GROUP)]
    prompt_ids = [prompts[i // GROUP] for i in range(SEQUENCES)]
    responses = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]
    engine = [(-torch.rand(n, generator=g) * 5).tolist() for n in lengths]
    tokens, mask, engine_lps = pack_sequences(prompt_ids, responses, engine, pad_id=0, pad_to_multiple=1)
    rewards = torch.randint(0, 2, (SEQUENCES,), generator=g).float()
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=group_advantages(rewards, GROUP).reshape(-1),
                         rewards=rewards, correct=rewards > 0, engine_logprobs=engine_lps,
                         lengths=torch.tensor([PROMPT + n for n in lengths]))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_path(name: str, paths: dict[str, str]) -> dict:
    """One RLAD learner step on this process (one gloo rank) with the batching of ``name``."""
    import torch

    from rlad_megatron.config import OptimConfig, TrainerConfig
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.loss import compute_policy_loss, local_denominators
    from rlad_megatron.config.loss import LossConfig
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.parallel import initialize_model_parallel
    from rlad_megatron.teacher import MegatronTeacher

    torch.manual_seed(0)
    initialize_model_parallel(1, 1, seed=7)
    trainer = TrainerConfig(**PATHS[name])
    modules, arch = load_hf_model(paths["student"], trainable=True)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-5, min_lr=1e-5, weight_decay=0.0))
    student = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    teacher = MegatronTeacher.load(paths["teacher"], batching=MicroBatching.for_forward(trainer),
                                   params_dtype=torch.float32)
    batch = w2_batch()
    denominators = local_denominators(batch.loss_mask)
    loss_config = LossConfig(algorithm="rlad", alpha=0.5)
    shares: list[float] = []

    def loss_fn(logprobs, entropy, mb):
        loss, stats = compute_policy_loss(loss_config, logprobs=logprobs, mask=mb.loss_mask,
                                          denominators=denominators, old_logprobs=logprobs.detach(),
                                          teacher_logprobs=mb.teacher_logprobs, advantages=mb.advantages)
        shares.append(float(loss))
        return loss, stats

    reset = _reset_peak()
    start = time.perf_counter()
    batch.teacher_logprobs = teacher.token_logprobs(batch)
    teacher_s = time.perf_counter() - start
    result = student.train_step(batch, loss_fn, MicroBatching.for_training(trainer))
    seconds = time.perf_counter() - start
    lengths = batch.sequence_lengths()
    return {"path": name, "seconds": seconds, "teacher_s": teacher_s, "peak_mb": _peak_mb(), "peak_reset": reset,
            "loss": sum(shares), "grad_norm": result.grad_norm, "applied": result.applied,
            "real_tokens": int(lengths.sum()), "padded_tokens": len(batch) * batch.tokens.shape[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="keep the models here (default: temporary)")
    parser.add_argument("--path", choices=sorted(PATHS), help=argparse.SUPPRESS)  # a child process's path
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--packed", action="store_true", help="also run the packed path (a detail line)")
    args = parser.parse_args()
    if args.path:  # child: run one path, print its JSON
        paths = json.loads(os.environ["RLAD_LONG_TAIL_PATHS"])
        print("RESULT " + json.dumps(run_path(args.path, paths)), flush=True)
        return

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="bench_long_tail_")
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    paths = prepare(root / "w2")
    lengths = response_lengths()
    print(f"W2: {SEQUENCES} sequences, prompt {PROMPT}, response lengths lognormal median {MEDIAN} sigma {SIGMA} "
          f"clipped {MIN_LEN}..{MAX_LEN}: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}", flush=True)
    results = {}
    for name in [p for p in PATHS if p != "packed" or args.packed]:
        env = dict(os.environ, RLAD_LONG_TAIL_PATHS=json.dumps(paths), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        done = subprocess.run([sys.executable, __file__, "--path", name], env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"path {name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-5000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        results[name] = r
        print(f"{name}: step_s={r['seconds']:.2f} (teacher {r['teacher_s']:.2f}) peak_mb={r['peak_mb']:.0f} "
              f"loss={r['loss']:.8f} grad_norm={r['grad_norm']:.6f} applied={r['applied']} "
              f"real_tokens={r['real_tokens']} padded_tokens={r['padded_tokens']} "
              f"load={os.getloadavg()[0]:.2f}", flush=True)
    if "packed" in results:
        k, p = results["packed"], results["padded"]
        print(f"packed vs padded: speedup={p['seconds'] / k['seconds']:.2f} mem_ratio={k['peak_mb'] / p['peak_mb']:.3f} "
              f"loss_rel_diff={abs(k['loss'] - p['loss']) / max(abs(p['loss']), 1e-12):.2e}")
    p, b = results["padded"], results["budget"]
    rel = abs(b["loss"] - p["loss"]) / max(abs(p["loss"]), 1e-12)
    print(f"long_tail: padded_s={p['seconds']:.2f} budget_s={b['seconds']:.2f} speedup={p['seconds'] / b['seconds']:.2f} "
          f"padded_peak_mb={p['peak_mb']:.0f} budget_peak_mb={b['peak_mb']:.0f} "
          f"mem_ratio={b['peak_mb'] / p['peak_mb']:.3f} loss_rel_diff={rel:.2e}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
