"""RLAD steps of the Megatron learner and a frozen Megatron teacher on one device, with a stand-in sampler, for
machines without vLLM (the lent H200 has torch and megatron-core only: docs/environment.md).

Per step: sample G responses for each of B random prompts with the student's Hugging Face twin (transformers
``generate`` at temperature 1; its per-token log-probs stand in for the engine's), a synthetic reward (share of
even token ids above one half: a reward that varies inside a group), GRPO advantages, the teacher's log-probs,
one RLAD (TRRD) optimizer step. The sampler keeps the initial weights (off-policy by a few steps, which the TRRD
ratio handles); this measures the learner and the teacher, not generation. Then a checkpoint is saved and loaded
back (the learner's log-probs must be unchanged), and the student is exported to Hugging Face and its
transformers forward compared with the learner's log-probs.

Baseline in the same run: one forward + backward of the student's Hugging Face twin (transformers, eager) on the
same batch; printed as ``megatron_vs_hf_train_ratio`` (> 1: the Megatron learner's step is faster).

Final line: ``gpu_rlad: {json}`` with tokens/s of the learner's step and the teacher's scoring, peak GPU memory,
step times and the checks' numbers; ``--out DIR`` also writes ``DIR/gpu_rlad.json``.

Run: ``python bench/gpu_rlad.py`` (GPU: bf16, model sizes below) or ``python bench/gpu_rlad.py --small`` (CPU
smoke run: fp32, tiny models, two steps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _sizes(small: bool) -> dict:
    if small:
        return dict(vocab=512, student=dict(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4,
                                            num_kv_heads=2),
                    teacher=dict(num_layers=2, hidden_size=192, intermediate_size=384, num_heads=6, num_kv_heads=2),
                    prompts=4, group=4, prompt_len=16, new_tokens=16, steps=2)
    # ~0.6B student / ~1.7B teacher shapes at half the depth (Qwen3-like widths), 32k vocabulary
    return dict(vocab=32768, student=dict(num_layers=14, hidden_size=1024, intermediate_size=3072, num_heads=16,
                                          num_kv_heads=8, head_dim=128),
                teacher=dict(num_layers=14, hidden_size=2048, intermediate_size=6144, num_heads=16, num_kv_heads=8,
                             head_dim=128),
                prompts=16, group=8, prompt_len=128, new_tokens=256, steps=3)


def _to(batch, device):
    values = {f.name: (None if getattr(batch, f.name) is None else getattr(batch, f.name).to(device))
              for f in dataclasses.fields(batch)}
    return type(batch)(**values)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(hf_model, prompts: torch.Tensor, group: int, new_tokens: int, seed: int):
    """``(response ids, response log-probs)`` lists, ``len(prompts) * group`` of each, group-major."""
    torch.manual_seed(seed)
    inputs = prompts.repeat_interleave(group, dim=0)
    out = hf_model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=True,
                            temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    new = out.sequences[:, inputs.shape[1]:]
    logits = torch.stack(out.logits, dim=1).float()  # [B*G, T, V]
    lps = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
    return new.tolist(), lps.tolist()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny models, fp32, two steps (CPU smoke run)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--teacher-offload", action="store_true", help="teacher.offload: host memory between passes")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    from rlad_megatron import parallel
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.device import rank_device
    from rlad_megatron.learner.checkpoint import load_checkpoint, save_checkpoint
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.loss import LossConfig, compute_policy_loss
    from rlad_megatron.loss.aggregation import Denominators, local_denominators
    from rlad_megatron.models import export_hf_checkpoint, load_hf_model
    from rlad_megatron.teacher import MegatronTeacher
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model
    from rlad_megatron.trainer.step.rollouts import Rollouts, to_sequence_batch

    cfg = _sizes(args.small)
    steps = args.steps or cfg["steps"]
    parallel.initialize_model_parallel(1, 1, seed=0)
    device = rank_device()
    dtype = torch.bfloat16 if device.type == "cuda" and not args.small else torch.float32
    work = Path(tempfile.mkdtemp(prefix="gpu_rlad_"))
    student_dir = make_tiny_hf_model(work / "student", "qwen3", vocab_size=cfg["vocab"], seed=1, **cfg["student"])
    teacher_dir = make_tiny_hf_model(work / "teacher", "qwen3", vocab_size=cfg["vocab"], seed=2, **cfg["teacher"])

    modules, arch = load_hf_model(student_dir, trainable=True, params_dtype=dtype)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-5))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    teacher = MegatronTeacher.load(teacher_dir, batching=cfg["group"], params_dtype=dtype,
                                   offload=args.teacher_offload)
    from transformers import AutoModelForCausalLM

    sampler = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype).to(device).eval()
    loss_cfg = LossConfig(algorithm="rlad")
    gen = torch.Generator().manual_seed(0)
    n_seq = cfg["prompts"] * cfg["group"]
    micro = cfg["group"]
    times: dict[str, list[float]] = {"sample": [], "teacher": [], "train": []}
    tokens_per_step = n_seq * (cfg["prompt_len"] + cfg["new_tokens"])
    metrics: list[dict] = []
    batch = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps):
        prompts = torch.randint(3, cfg["vocab"], (cfg["prompts"], cfg["prompt_len"]), generator=gen).to(device)
        t = time.perf_counter()
        with torch.no_grad():
            responses, lps = _sample(sampler, prompts, cfg["group"], cfg["new_tokens"], seed=step)
        _sync(device)
        times["sample"].append(time.perf_counter() - t)
        prompt_ids = [row for row in prompts.tolist() for _ in range(cfg["group"])]
        rewards = [float(sum(1 for x in r if x % 2 == 0) > len(r) / 2) for r in responses]
        rollouts = Rollouts(prompt_ids=prompt_ids, response_ids=responses, response_logprobs=lps,
                            truncated=[False] * n_seq, rewards=rewards, correct=[r > 0 for r in rewards],
                            format_ok=[True] * n_seq, reward_errors=0, group_size=cfg["group"])
        batch, stats = to_sequence_batch(rollouts, pad_id=0, skip_uniform_groups=False)
        batch = _to(batch, device)
        t = time.perf_counter()
        batch.teacher_logprobs = teacher.token_logprobs(batch)
        _sync(device)
        times["teacher"].append(time.perf_counter() - t)
        den = local_denominators(batch.loss_mask)
        denominators = Denominators(float(den.num_tokens), float(den.num_seqs))

        def loss_fn(logprobs, entropy, mb):
            return compute_policy_loss(loss_cfg, logprobs=logprobs, mask=mb.loss_mask, denominators=denominators,
                                       old_logprobs=logprobs.detach(), teacher_logprobs=mb.teacher_logprobs,
                                       advantages=mb.advantages, correct=mb.correct)

        t = time.perf_counter()
        result = policy.train_step(batch, loss_fn, micro)
        _sync(device)
        times["train"].append(time.perf_counter() - t)
        metrics.append({"step": step + 1, "applied": result.applied, "grad_norm": result.grad_norm,
                        "reward_mean": stats.get("reward/mean")})

    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    measured = slice(1, None) if steps > 1 else slice(0, None)  # the first step warms kernels and caches up
    train_s = statistics.median(times["train"][measured])
    teacher_s = statistics.median(times["teacher"][measured])

    # HF baseline: one forward + backward of the same student on the same batch (eager transformers)
    hf_train = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype).to(device).train()
    hf_times = []
    for _ in range(2):
        t = time.perf_counter()
        for i in range(0, len(batch), micro):
            ids = batch.tokens[i:i + micro]
            out = hf_train(input_ids=ids).logits[:, :-1].float()
            lp = torch.log_softmax(out, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            (-(lp * batch.loss_mask[i:i + micro]).sum() / denominators.num_tokens).backward()
        _sync(device)
        hf_times.append(time.perf_counter() - t)
    del hf_train

    # checkpoint round trip: the learner's log-probs are unchanged after save + load
    before = policy.token_logprobs(batch, micro)
    ckpt = save_checkpoint(work / "ckpt", wrapped, optimizer)
    with torch.no_grad():
        for param in modules[0].parameters():
            param.add_(0.01)
    load_checkpoint(ckpt, wrapped, optimizer)
    after = policy.token_logprobs(batch, micro)
    ckpt_diff = float((before - after).abs().max())

    # export to Hugging Face and compare the transformers forward with the learner
    export_hf_checkpoint(modules, arch, work / "hf", tokenizer_dir=student_dir, dtype=dtype)
    exported = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        logits = exported(input_ids=batch.tokens[:micro]).logits[:, :-1].float()
    hf_lp = torch.log_softmax(logits, -1).gather(-1, batch.tokens[:micro, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch.loss_mask[:micro]
    export_diff = float(((hf_lp - before[:micro].float()).abs() * mask).max())

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "steps": steps, "sequences_per_step": n_seq,
        "tokens_per_step": tokens_per_step,
        "student_params_m": round(sum(p.numel() for p in modules[0].parameters()) / 1e6, 1),
        "teacher_offload": args.teacher_offload,
        "learner_train_tokens_per_s": round(tokens_per_step / train_s, 1),
        "teacher_score_tokens_per_s": round(tokens_per_step / teacher_s, 1),
        "sample_s_median": round(statistics.median(times["sample"][measured]), 3),
        "teacher_s_median": round(teacher_s, 3), "train_s_median": round(train_s, 3),
        "hf_train_s": round(min(hf_times), 3), "megatron_vs_hf_train_ratio": round(min(hf_times) / train_s, 3),
        "peak_gpu_gib": None if peak_gib is None else round(peak_gib, 2),
        "checkpoint_roundtrip_max_abs": ckpt_diff, "export_vs_learner_max_abs": export_diff,
        "steps_detail": metrics,
    }
    assert all(m["applied"] for m in metrics), f"an optimizer step was skipped: {metrics}"
    assert ckpt_diff == 0.0, f"log-probs changed across a checkpoint round trip: {ckpt_diff}"
    print("gpu_rlad: " + json.dumps(report), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_rlad.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
