"""Where the time of a W1 step goes: each phase against its compute floor, and a cProfile of the measured steps.

Runs the real trainer of workload W1 (``bench/step.py``'s models, prompts and config) in this process as a one-rank
torch.distributed world (what ``torchrun --nproc-per-node 1`` gives it), then:

- the GEMM rate of this machine at the thread count the learner runs with, on the shapes of each phase (the
  engine's decode rows, the learner's micro-batch rows, the teacher's), measured next to the run;
- per phase: the median measured seconds, its FLOPs (2 x parameters x tokens per forward, x3 with the backward;
  attention's score FLOPs added), the compute floor = FLOPs / GEMM rate, and the overhead beyond it;
- ``--cprofile N``: the top functions by cumulative and own time over the measured steps;
- ``--ab N``: the last step's batch trained (and, with a teacher, scored) N times by our learner and by a plain HF
  model (``transformers`` forward/backward + ``torch.optim.AdamW``; the teacher's no-grad forward), alternating,
  in this process at the same thread count: the learner's overhead over plain PyTorch on identical work, robust to
  the machine's load because the two alternate.

Only ratios against a same-run baseline count as speed claims (``bench/step.py --baseline-src``); this tool says
where the time goes.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/profile_step.py --mode rlad --steps 4 [--cprofile 40]``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import STUDENT, TEACHER, prepare, w1_config  # noqa: E402  (bench/ is not a package)


def transformer_params(spec: dict, vocab: int) -> int:
    """Matmul parameters of a Llama layout (q, k, v, o, gate, up, down per layer; the output head)."""
    h, f, layers = spec["hidden_size"], spec["intermediate_size"], spec["num_layers"]
    kv = h * spec["num_kv_heads"] // spec["num_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * f
    return layers * per_layer + h * vocab


def forward_flops(spec: dict, vocab: int, rows: int, width: int) -> float:
    """FLOPs of one forward over ``rows`` sequences padded to ``width`` (GEMMs plus attention scores, causal)."""
    tokens = rows * width
    attention = spec["num_layers"] * 2 * 2 * rows * width * width * spec["hidden_size"] / 2
    return 2.0 * transformer_params(spec, vocab) * tokens + attention


def gemm_rate(m: int, k: int, n: int, seconds: float = 0.3) -> float:
    """FLOP/s of ``[m, k] @ [k, n]`` in float32 at the current torch thread count."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2.0 * m * k * n * count / (time.perf_counter() - start)


def layer_rate(spec: dict, m: int) -> float:
    """The GEMM rate of one transformer layer's matmuls at ``m`` rows (time-weighted over its shapes)."""
    h, f = spec["hidden_size"], spec["intermediate_size"]
    shapes = [(m, h, 3 * h), (m, h, h), (m, h, 2 * f), (m, f, h)]
    flops = sum(2.0 * m * k * n for _, k, n in shapes)
    seconds = sum(2.0 * m * k * n / gemm_rate(m, k, n, 0.15) for _, k, n in shapes)
    return flops / seconds


def alternate_with_hf(trainer, batch, student_dir: Path, teacher_dir: Path | None, repeats: int) -> dict:
    """Our learner's update (and teacher scoring) of ``batch`` vs the same work in plain HF/PyTorch, alternating."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.0)
    hf_teacher = (AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
                  if teacher_dir is not None else None)
    from rlad_megatron.engine_api import SamplingSettings

    parts, cfg = trainer.parts, trainer.config
    examples = parts.prompts.next_batch()
    prompt_ids = [ex.prompt_token_ids for ex in examples]
    stops = list(parts.stop_ids)
    width = max(len(p) for p in prompt_ids)
    prompt = torch.tensor([[parts.pad_id] * (width - len(p)) + list(p) for p in prompt_ids])
    prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    group, new_tokens = cfg.rollout.group_size, cfg.rollout.max_new_tokens
    tokens = batch.tokens
    attention = torch.ones_like(tokens)
    mask = batch.loss_mask.float()
    out: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        fn()
        out.setdefault(name, []).append(time.perf_counter() - start)

    def hf_train():
        hf.train()
        logits = hf(input_ids=tokens, attention_mask=attention).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
        adv = batch.advantages[:, None]
        loss = -(torch.exp(logp - logp.detach()) * adv * mask).sum() / mask.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()

    def hf_score():
        with torch.no_grad():
            logits = hf_teacher(input_ids=tokens, attention_mask=attention).logits[:, :-1]
            torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None])

    def ours_generate():
        settings = SamplingSettings(n=group, temperature=1.0, top_p=1.0, max_tokens=new_tokens, stop_token_ids=stops,
                                    seed=1234)
        out = parts.engine.generate(prompt_ids, settings)
        counts.setdefault("ours_tokens", []).append(sum(len(c.token_ids) for r in out for c in r.completions))

    def hf_generate():
        hf.eval()
        with torch.no_grad():
            out = hf.generate(input_ids=prompt, attention_mask=prompt_mask, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, max_new_tokens=new_tokens, num_return_sequences=group, eos_token_id=stops,
                              pad_token_id=parts.pad_id)
        done = torch.isin(out[:, width:], torch.tensor(stops))
        counts.setdefault("hf_tokens", []).append(int(((done.cumsum(1) - done.long()) == 0).sum()))

    counts: dict[str, list[int]] = {}
    for _ in range(repeats):
        timed("ours_generation", ours_generate)
        timed("hf_generation", hf_generate)
        timed("ours_train", lambda: trainer._update_policy(batch))
        timed("hf_train", hf_train)
        if hf_teacher is not None:
            timed("ours_teacher", lambda: trainer.parts.teacher.token_logprobs(batch))
            timed("hf_teacher", hf_score)
    out.update(counts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default="rlad")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cprofile", type=int, default=0, help="print the top N functions of a cProfile")
    parser.add_argument("--ab", type=int, default=0, help="alternating ours-vs-HF repeats of the train/teacher work")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--set", action="append", default=[], help="extra config overrides, dotted=value")
    args = parser.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="profile_step_")
    root = Path(args.workdir or tmp.name)
    paths = prepare(root / "w1")
    cfg_dict = w1_config(paths, args.mode, 1, args.warmup + args.steps, root / f"run-{args.mode}-{os.getpid()}")
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        import yaml

        cfg_dict[section][name] = yaml.safe_load(value)

    from rlad_megatron.config import run_config_from_dict
    from rlad_megatron.trainer.loop import Trainer

    threads_at_start = torch.get_num_threads()
    config = run_config_from_dict(cfg_dict)
    trainer = Trainer(config)
    threads_learner = torch.get_num_threads()
    rows = []
    captured: dict = {}
    update_policy = trainer._update_policy

    def capturing(batch):  # keep the last step's batch for the A/B below
        captured["batch"] = batch
        return update_policy(batch)

    trainer._update_policy = capturing
    profiler = cProfile.Profile() if args.cprofile else None
    try:
        for i in range(args.warmup + args.steps):
            measured = i >= args.warmup
            if measured and profiler is not None:
                profiler.enable()
            metrics = trainer.train_step()
            if measured and profiler is not None:
                profiler.disable()
            trainer.step += 1
            if measured:
                rows.append(metrics)
        if args.ab:
            ab_rows = alternate_with_hf(trainer, captured["batch"], Path(paths["student"]),
                                        Path(paths["teacher"]) if trainer.parts.teacher is not None else None,
                                        args.ab)
    finally:
        trainer.parts.close()

    med = lambda key: statistics.median(r.get(key, 0.0) for r in rows)  # noqa: E731
    tokens = med("rollout/generated_tokens")
    vocab = 100
    n_seq = config.data.prompts_per_step * config.rollout.group_size
    prompt_len = 8  # "ddd+ddd=" plus bos
    width = prompt_len + int(med("rollout/response_length_max") or config.rollout.max_new_tokens)
    mbs = config.trainer.micro_batch_size
    print(f"threads: torch at start {threads_at_start}, learner after the engine is built {threads_learner}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; cpus {os.cpu_count()}; load {os.getloadavg()[0]:.2f}")
    rate_decode = layer_rate(STUDENT, n_seq)
    rate_student = layer_rate(STUDENT, mbs * width)
    rate_teacher = layer_rate(TEACHER, mbs * width)
    rate_full = layer_rate(STUDENT, n_seq * width)
    print(f"GEMM rate (GFLOP/s, fp32, {torch.get_num_threads()} threads): decode rows {n_seq}: {rate_decode / 1e9:.1f}; "
          f"student micro-batch rows {mbs * width}: {rate_student / 1e9:.1f}; whole batch rows {n_seq * width}: "
          f"{rate_full / 1e9:.1f}; teacher rows {mbs * width}: {rate_teacher / 1e9:.1f}")
    gen_flops = 2.0 * transformer_params(STUDENT, vocab) * (tokens + n_seq * prompt_len)
    train_flops = 3.0 * forward_flops(STUDENT, vocab, n_seq, width)
    teacher_flops = forward_flops(TEACHER, vocab, n_seq, width) if args.mode in ("rlad", "kdrl") else 0.0
    probe = 32  # the sync's probe: tokens the engine samples and the learner scores (weight_sync/verify.py)
    sync_flops = 2.0 * transformer_params(STUDENT, vocab) * probe * 2
    floors = {"generation": gen_flops / rate_decode, "teacher": teacher_flops / rate_teacher,
              "train": train_flops / rate_student, "sync": sync_flops / rate_decode, "other": 0.0}
    print(f"W1 {args.mode}: {n_seq} sequences, width ~{width}, {tokens:.0f} generated tokens/step, "
          f"micro-batch {mbs}")
    print(f"{'phase':<12}{'measured s':>12}{'GFLOP':>10}{'floor s':>10}{'overhead s':>12}")
    total_floor = 0.0
    for phase, flops in (("generation", gen_flops), ("teacher", teacher_flops), ("train", train_flops),
                         ("sync", sync_flops), ("other", 0.0)):
        measured_s = med(f"time/{phase}")
        total_floor += floors[phase]
        print(f"{phase:<12}{measured_s:>12.3f}{flops / 1e9:>10.2f}{floors[phase]:>10.3f}"
              f"{measured_s - floors[phase]:>12.3f}")
    print(f"{'step':<12}{med('time/step'):>12.3f}{'':>10}{total_floor:>10.3f}{med('time/step') - total_floor:>12.3f}")
    extra = {k: med(k) for k in ("sync/seconds", "sync/gather_seconds") if k in rows[0]}
    print("sync parts: " + " ".join(f"{k}={v:.3f}" for k, v in extra.items()))
    if args.ab:
        med_ab = {k: statistics.median(v) for k, v in ab_rows.items()}
        print(f"A/B on the last batch ({args.ab} alternating repeats, median s): " + " ".join(
            f"{k}={v:.3f}" for k, v in med_ab.items()))
        print(f"  generation ours/hf = {med_ab['ours_generation'] / med_ab['hf_generation']:.2f}x (tokens ours "
              f"{med_ab['ours_tokens']:.0f}, hf {med_ab['hf_tokens']:.0f})")
        print(f"  train ours/hf = {med_ab['ours_train'] / med_ab['hf_train']:.2f}x" + (
            f"; teacher ours/hf = {med_ab['ours_teacher'] / med_ab['hf_teacher']:.2f}x" if "hf_teacher" in med_ab
            else ""))
    if profiler is not None:
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.cprofile)
            print(out.getvalue())
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
