"""A plain single-process Hugging Face trainer doing W1's work: the reference ``bench/step.py`` compares us with.

What the issue compares us with is a single-process trainer (TRL's GRPOTrainer / DistillationTrainer, torch with 2
threads). This is our own minimal one, on the same W1 models, prompts, group size and token budget, in one process:

- generation: ``model.generate`` (sampling, temperature 1, no top-k/top-p, <= 32 new tokens, the run's stop tokens),
  8 prompts x G=8 per step;
- rewards: the task's reward function; GRPO advantages (group mean / population std);
- ``--mode grpo``: one forward/backward of the student over the 64 sequences with the on-policy GRPO surrogate
  (ratio ``exp(logp - logp.detach())`` times the advantage, token mean), then AdamW (lr 1e-5, no weight decay);
- ``--mode rlad`` / ``kdrl``: the same plus the frozen 14M teacher's forward (no grad) and an on-policy
  distillation term on the sampled tokens (the teacher/student log-ratio as a per-token reward), as TRL's
  distillation trainer does the teacher forward and the student's update in one process.

No vLLM, no Megatron, no torch.distributed, no weight sync: generation and training share the model object. The
numbers are the same kind as the trainer's: per-step time of each phase and generated tokens (up to and including
the first stop token), and the process's peak RSS. Prints one JSON object (``--json``) or a summary line.

W3 (``bench/step.py --workload w3``: a 151,936-row vocabulary, 128-token responses) runs it as TRL's GRPOTrainer
keeps its memory down (``--micro-batch 8 --lean-logprobs``): forward/backward in micro-batches of 8 sequences (its
``per_device_train_batch_size`` default) with the gradients accumulated, and log-probs as the target logit minus a
per-sequence log-sum-exp (TRL's ``selective_log_softmax``) instead of a full ``log_softmax`` copy of the logits;
the teacher scores in the same micro-batches.

Run: ``PYTHONPATH=$PWD .venv/bin/python bench/hf_reference.py --w1 DIR --mode grpo --steps 4 --warmup 1``
(``DIR``: the folder ``bench/step.py`` prepares W1 in).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def load_prompts(w1: Path, tokenizer) -> tuple[list, object]:
    """W1's prompts, templated and tokenized exactly as the trainer's data pipeline does."""
    from rlad_megatron.data.prompt_dataset import load_prompt_dataset
    from rlad_megatron.tasks.registry import get_training_task

    task = get_training_task("sum_prefix", {})
    return load_prompt_dataset([str(w1 / "train.jsonl")], task, tokenizer, 32).examples, task


def token_logprobs(model, sequences: torch.Tensor, attention: torch.Tensor, lean: bool = False) -> torch.Tensor:
    """``[B, L-1]`` log-probs of ``sequences[:, 1:]`` under ``model``; ``lean``: the target logit minus each
    sequence's log-sum-exp, one sequence at a time (no log-softmax copy of the logits)."""
    logits = model(input_ids=sequences, attention_mask=attention).logits[:, :-1].float()
    targets = sequences[:, 1:, None]
    if lean:
        return logits.gather(-1, targets).squeeze(-1) - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return torch.log_softmax(logits, dim=-1).gather(-1, targets).squeeze(-1)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(w1: Path, mode: str, steps: int, warmup: int, threads: int, prompts_per_step: int = 8, group: int = 8,
        max_new_tokens: int = 32, lr: float = 1e-5, seed: int = 7, micro_batch: int | None = None,
        lean: bool = False) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.models.stop_tokens import stop_token_ids

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(w1 / "student")
    examples, task = load_prompts(w1, tokenizer)
    distill = mode in ("rlad", "kdrl")
    stops = list(stop_token_ids(tokenizer, [w1 / "student"] + ([w1 / "teacher"] if distill else [])))
    student = AutoModelForCausalLM.from_pretrained(w1 / "student", dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(w1 / "teacher", dtype=torch.float32).eval() if distill else None
    for p in (teacher.parameters() if teacher is not None else ()):
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    rows = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        batch = [examples[(step * prompts_per_step + i) % len(examples)] for i in range(prompts_per_step)]
        width = max(len(ex.prompt_token_ids) for ex in batch)
        prompt = torch.full((len(batch), width), pad, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt)
        for i, ex in enumerate(batch):  # left padding, as generate wants
            prompt[i, width - len(ex.prompt_token_ids):] = torch.tensor(ex.prompt_token_ids)
            prompt_mask[i, width - len(ex.prompt_token_ids):] = 1

        t = time.perf_counter()
        student.eval()
        with torch.no_grad():
            out = student.generate(input_ids=prompt, attention_mask=prompt_mask, do_sample=True, temperature=1.0,
                                   top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, num_return_sequences=group,
                                   eos_token_id=stops, pad_token_id=pad)
        completions = out[:, width:]
        # a completion ends at (and includes) its first stop token; later positions are padding
        is_stop = torch.isin(completions, torch.tensor(stops))
        after_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
        completion_mask = (~after_stop).long()
        generation_s = time.perf_counter() - t

        texts = tokenizer.batch_decode([c[m.bool()].tolist() for c, m in zip(completions, completion_mask)],
                                       skip_special_tokens=True)
        records = [ex.record for ex in batch for _ in range(group)]
        rewards = torch.tensor([task.reward(text, rec).score for text, rec in zip(texts, records)])
        grouped = rewards.view(-1, group)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True)
                                                                   + 1e-6)).flatten()
        sequences = out
        attention = torch.cat([prompt_mask.repeat_interleave(group, 0), completion_mask], dim=1)
        loss_mask = torch.cat([torch.zeros(len(out), width - 1, dtype=torch.long), completion_mask], 1).float()

        parts = [slice(i, i + (micro_batch or len(out))) for i in range(0, len(out), micro_batch or len(out))]
        t = time.perf_counter()
        teacher_lp = None
        if teacher is not None:
            with torch.no_grad():
                teacher_lp = torch.cat([token_logprobs(teacher, sequences[p], attention[p], lean) for p in parts])
        teacher_s = time.perf_counter() - t

        t = time.perf_counter()
        student.train()
        optimizer.zero_grad(set_to_none=True)
        denominator = loss_mask.sum().clamp(min=1)
        for p in parts:  # gradients accumulated over the micro-batches
            logp = token_logprobs(student, sequences[p], attention[p], lean)
            per_token_adv = advantages[p, None].expand_as(logp)
            if teacher_lp is not None:  # on-policy distillation: the teacher/student log-ratio as a per-token reward
                per_token_adv = per_token_adv + (teacher_lp[p] - logp.detach())
            ratio = torch.exp(logp - logp.detach())
            loss = -(ratio * per_token_adv * loss_mask[p]).sum() / denominator
            loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        train_s = time.perf_counter() - t

        step_s = time.perf_counter() - start
        if step >= warmup:
            rows.append({"step_s": step_s, "generation": generation_s, "teacher": teacher_s, "train": train_s,
                         "other": step_s - generation_s - teacher_s - train_s,
                         "tokens": int(completion_mask.sum()), "reward": float(rewards.mean())})
    med = statistics.median
    summary = {key: med(r[key] for r in rows) for key in ("step_s", "generation", "teacher", "train", "other")}
    summary["tokens_per_step"] = med(r["tokens"] for r in rows)
    summary["tokens_per_s"] = sum(r["tokens"] for r in rows) / sum(r["step_s"] for r in rows)
    summary["reward"] = statistics.mean(r["reward"] for r in rows)
    summary["threads"] = torch.get_num_threads()
    summary["peak_rss_mb"] = _peak_rss_mb()
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--w1", required=True, help="the W1 folder bench/step.py prepares (student, teacher, train)")
    parser.add_argument("--mode", default="grpo", choices=["grpo", "rlad", "kdrl"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the issue's reference: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="sequences per forward/backward (gradients accumulated); default: the whole step")
    parser.add_argument("--lean-logprobs", action="store_true",
                        help="target logit minus a per-sequence log-sum-exp (TRL's), no log-softmax copy")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    summary = run(Path(args.w1), args.mode, args.steps, args.warmup, args.threads,
                  max_new_tokens=args.max_new_tokens, micro_batch=args.micro_batch, lean=args.lean_logprobs)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"hf mode={args.mode} " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in summary.items()))


if __name__ == "__main__":
    main()
