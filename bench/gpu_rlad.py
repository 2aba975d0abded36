"""RLAD steps of the Megatron learner and a frozen Megatron teacher on one device, with a stand-in sampler, for
machines without vLLM (the lent H200 has torch and megatron-core only: docs/gpu.md).

Parts, each written to ``--out DIR/gpu_rlad.json`` as soon as it ends (a later part that fails or hangs leaves the
earlier numbers; a failed part is recorded with its error and the next independent part still runs):

- ``steps``: per step, sample G responses for each of B random prompts with the student's Hugging Face twin
  (transformers ``generate`` at temperature 1; its per-token log-probs stand in for the engine's), a synthetic
  reward (share of even token ids above one half), GRPO advantages, the teacher's log-probs, one RLAD (TRRD)
  optimizer step of the learner. The sampler keeps the initial weights (off-policy by a few steps, which the TRRD
  ratio handles); this measures the learner and the teacher, not generation. Reported: median seconds after the
  first step, tokens/s, MFU (model FLOPs: 2 x matmul parameters per token per forward, x3 with the backward, plus
  the causal attention scores; against the GPU's dense bf16 peak, ``PEAK_BF16_FLOPS``), peak GPU memory.
- ``hf_baseline``: the same work in transformers (eager, same dtype): the same micro-batches through the same TRRD
  loss, backward, gradient clipping and a torch AdamW step, i.e. one full optimizer step like the learner's (the
  Megatron side also keeps fp32 main weights for its bf16 parameters; HF's AdamW updates the bf16 weights directly);
  median of the same number of steps. ``megatron_vs_hf_train_ratio`` = HF step seconds / learner step seconds
  (> 1: the Megatron learner is faster).
- ``checkpoint``: save and load the distributed checkpoint (model and distributed-optimizer state); the learner's
  log-probs must be unchanged (the TE-less distributed-optimizer path on a GPU without Transformer Engine).
- ``export``: export to Hugging Face and compare the transformers forward with the learner's log-probs.

Final line: ``gpu_rlad: {json}``; exit code 1 if a part failed.

Run: ``python bench/gpu_rlad.py`` (GPU: bf16, model sizes below) or ``python bench/gpu_rlad.py --small`` (CPU
smoke run: fp32, tiny models, two steps).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

#: Dense bf16 tensor-core peak FLOP/s (NVIDIA's data sheets, without sparsity), by a name torch reports.
PEAK_BF16_FLOPS: dict[str, float] = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12}


def peak_bf16_flops(device_name: str) -> float | None:
    """The peak of the longest ``PEAK_BF16_FLOPS`` key in ``device_name`` (None: not in the table, e.g. a CPU)."""
    matches = [k for k in PEAK_BF16_FLOPS if k in device_name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def matmul_params(spec: dict, vocab: int) -> int:
    """Parameters of a Qwen3/Llama layout's matrix products: q, k, v, o, gate, up, down per layer, the output head."""
    h, f, layers = spec["hidden_size"], spec["intermediate_size"], spec["num_layers"]
    head_dim = spec.get("head_dim") or h // spec["num_heads"]
    q, kv = spec["num_heads"] * head_dim, spec["num_kv_heads"] * head_dim
    return layers * (2 * h * q + 2 * h * kv + 3 * h * f) + h * vocab


def forward_flops(spec: dict, vocab: int, rows: int, width: int) -> float:
    """FLOPs of one forward over ``rows`` sequences of ``width`` tokens: the matrix products plus the causal attention
    scores and their product with the values (half of the ``width x width`` square)."""
    head_dim = spec.get("head_dim") or spec["hidden_size"] // spec["num_heads"]
    attention = spec["num_layers"] * 2 * 2 * rows * width * width * spec["num_heads"] * head_dim / 2
    return 2.0 * matmul_params(spec, vocab) * rows * width + attention


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


class Report:
    """The JSON report, rewritten to ``out`` after every part."""

    def __init__(self, out: Path | None, **fields):
        self.out, self.data = out, {**fields, "parts": {}}
        if out:
            out.mkdir(parents=True, exist_ok=True)
        self.write()

    def part(self, name: str, fn) -> bool:
        """Run part ``name`` (``fn() -> dict`` of its results); record "ok" or the error; write the report."""
        start = time.perf_counter()
        self.data["parts"][name] = "running (killed by a timeout if it stays so)"
        self.write()
        try:
            self.data.update(fn())
            self.data["parts"][name] = "ok"
            ok = True
        except Exception as exc:  # recorded, and the next independent part runs
            traceback.print_exc()
            self.data["parts"][name] = f"failed: {type(exc).__name__}: {exc}"[:500]
            ok = False
        self.data.setdefault("part_s", {})[name] = round(time.perf_counter() - start, 2)
        self.write()
        print(f"gpu_rlad part {name}: {self.data['parts'][name]}", flush=True)
        return ok

    def write(self) -> None:
        if self.out:
            (self.out / "gpu_rlad.json").write_text(json.dumps(self.data, indent=1))


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
    fallback_fixes = parallel.apply_megatron_compat()
    parallel.initialize_model_parallel(1, 1, seed=0)
    device = rank_device()
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda and not args.small else torch.float32
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_bf16_flops(name) if dtype == torch.bfloat16 else None
    n_seq, width = cfg["prompts"] * cfg["group"], cfg["prompt_len"] + cfg["new_tokens"]
    tokens_per_step = n_seq * width
    report = Report(args.out, device=name, dtype=str(dtype).removeprefix("torch."), steps=steps,
                    sequences_per_step=n_seq, tokens_per_step=tokens_per_step, teacher_offload=args.teacher_offload,
                    te_less_fixes=sorted(fallback_fixes), peak_bf16_tflops=None if peak is None else peak / 1e12)
    if args.teacher_offload and not cuda:
        report.data["parts"]["steps"] = "skipped: teacher.offload moves the teacher between a GPU and host memory"
        report.write()
        print("gpu_rlad: " + json.dumps(report.data), flush=True)
        return report.data

    work = Path(tempfile.mkdtemp(prefix="gpu_rlad_"))
    student_dir = make_tiny_hf_model(work / "student", "qwen3", vocab_size=cfg["vocab"], seed=1, **cfg["student"])
    teacher_dir = make_tiny_hf_model(work / "teacher", "qwen3", vocab_size=cfg["vocab"], seed=2, **cfg["teacher"])
    modules, arch = load_hf_model(student_dir, trainable=True, params_dtype=dtype)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-5))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    loss_cfg = LossConfig(algorithm="rlad")
    micro = cfg["group"]
    report.data["student_params_m"] = round(sum(p.numel() for p in modules[0].parameters()) / 1e6, 1)
    state: dict = {}

    def rlad_steps() -> dict:
        from transformers import AutoModelForCausalLM

        teacher = MegatronTeacher.load(teacher_dir, batching=micro, params_dtype=dtype,
                                       offload=args.teacher_offload)
        sampler = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype).to(device).eval()
        gen = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"sample": [], "teacher": [], "train": []}
        metrics: list[dict] = []
        if cuda:
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
                return compute_policy_loss(loss_cfg, logprobs=logprobs, mask=mb.loss_mask,
                                           denominators=denominators, old_logprobs=logprobs.detach(),
                                           teacher_logprobs=mb.teacher_logprobs, advantages=mb.advantages,
                                           correct=mb.correct)

            t = time.perf_counter()
            result = policy.train_step(batch, loss_fn, micro)
            _sync(device)
            times["train"].append(time.perf_counter() - t)
            metrics.append({"step": step + 1, "applied": result.applied, "grad_norm": result.grad_norm,
                            "reward_mean": stats.get("reward/mean")})
        assert all(m["applied"] for m in metrics), f"an optimizer step was skipped: {metrics}"
        state.update(batch=batch, denominators=denominators, train_times=times["train"])
        measured = slice(1, None) if steps > 1 else slice(0, None)  # the first step warms kernels and caches up
        train_s = statistics.median(times["train"][measured])
        teacher_s = statistics.median(times["teacher"][measured])
        train_flops = 3.0 * forward_flops(cfg["student"], cfg["vocab"], n_seq, width)
        teacher_flops = forward_flops(cfg["teacher"], cfg["vocab"], n_seq, width)
        out = {
            "learner_train_tokens_per_s": round(tokens_per_step / train_s, 1),
            "teacher_score_tokens_per_s": round(tokens_per_step / teacher_s, 1),
            "sample_s_median": round(statistics.median(times["sample"][measured]), 3),
            "teacher_s_median": round(teacher_s, 3), "train_s_median": round(train_s, 3),
            "learner_tflops_per_s": round(train_flops / train_s / 1e12, 2),
            "teacher_tflops_per_s": round(teacher_flops / teacher_s / 1e12, 2),
            "learner_mfu": None if peak is None else round(train_flops / train_s / peak, 4),
            "teacher_mfu": None if peak is None else round(teacher_flops / teacher_s / peak, 4),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
            "steps_detail": metrics,
        }
        del sampler, teacher
        return out

    def hf_baseline() -> dict:
        """The learner's step in transformers: same micro-batches, same loss, backward, clip, AdamW step."""
        from transformers import AutoModelForCausalLM

        batch, denominators = state["batch"], state["denominators"]
        model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            for i in range(0, len(batch), micro):
                ids = batch.tokens[i:i + micro]
                logits = model(input_ids=ids).logits[:, :-1].float()
                lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                loss, _ = compute_policy_loss(loss_cfg, logprobs=lp, mask=batch.loss_mask[i:i + micro],
                                           denominators=denominators, old_logprobs=lp.detach(),
                                           teacher_logprobs=batch.teacher_logprobs[i:i + micro],
                                           advantages=batch.advantages[i:i + micro],
                                           correct=batch.correct[i:i + micro])
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t)
        measured = slice(1, None) if steps > 1 else slice(0, None)
        hf_s = statistics.median(times[measured])
        train_s = statistics.median(state["train_times"][measured])
        del model, opt
        return {"hf_train_s": round(hf_s, 3), "megatron_vs_hf_train_ratio": round(hf_s / train_s, 3),
                "hf_peak_gpu_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
                "hf_baseline_times": "one full optimizer step on both sides (forward, TRRD loss, backward, clip, "
                                     "AdamW), median of the steps after the first"}

    def checkpoint() -> dict:
        batch = state["batch"]
        before = policy.token_logprobs(batch, micro)
        ckpt = save_checkpoint(work / "ckpt", wrapped, optimizer)
        with torch.no_grad():
            for param in modules[0].parameters():
                param.add_(0.01)
        load_checkpoint(ckpt, wrapped, optimizer)
        diff = float((before - policy.token_logprobs(batch, micro)).abs().max())
        assert diff == 0.0, f"log-probs changed across a checkpoint round trip: {diff}"
        state["before"] = before
        return {"checkpoint_roundtrip_max_abs": diff}

    def export() -> dict:
        from transformers import AutoModelForCausalLM

        batch = state["batch"]
        before = state.get("before")
        if before is None:
            before = policy.token_logprobs(batch, micro)
        export_hf_checkpoint(modules, arch, work / "hf", tokenizer_dir=student_dir, dtype=dtype)
        exported = AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).to(device).eval()
        with torch.no_grad():
            logits = exported(input_ids=batch.tokens[:micro]).logits[:, :-1].float()
        hf_lp = torch.log_softmax(logits, -1).gather(-1, batch.tokens[:micro, 1:].unsqueeze(-1)).squeeze(-1)
        mask = batch.loss_mask[:micro]
        return {"export_vs_learner_max_abs": float(((hf_lp - before[:micro].float()).abs() * mask).max())}

    if report.part("steps", rlad_steps):
        report.part("hf_baseline", hf_baseline)
        report.part("checkpoint", checkpoint)
        report.part("export", export)
    print("gpu_rlad: " + json.dumps(report.data), flush=True)
    return report.data


if __name__ == "__main__":
    result = main()
    sys.exit(0 if all(v == "ok" or v.startswith("skipped") for v in result["parts"].values()) else 1)
