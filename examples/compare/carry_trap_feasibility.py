"""Is ``carry_trap`` a comparison that can separate methods? A cheap check with the tiny-model tooling (issue 33).

    python -m examples.compare.carry_trap_feasibility --out outputs/carry_trap [--teacher-steps 800 ...]

1. Data: ``carry_trap`` train/test (1..3 digits; about a third of the sums carry out).
2. Teacher: a tiny Llama trained (``tiny.sft.train_sft``) on the FLAWED references (final carry dropped).
3. Student: a smaller Llama warm-started on the correct references, briefly.
4. Accuracy of both on the test prompts, greedy and sampled (temperature 1, ``--samples`` per prompt), per subset
   (``plain`` / ``carry``).
5. TRRD's mechanism on the ``carry`` subset: the teacher's and the student's log-prob of the correct answer's first
   digit, and how often their log-ratio exceeds the clamp (there the teacher blocks a correct response's update).
6. The offline-distillation probe: sample the teacher on training prompts (temperature 1), keep the samples the
   verifier accepts, train the student on them with the RL runs' budget (steps x batch, lr), and measure again: does
   SFT on filtered teacher samples already win everywhere, or does it leave the ``carry`` subset where it was?

Everything runs in this process on one torch thread; models are cached under ``--out`` by their settings. Prints a
table and writes ``feasibility.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _accuracy(model: Any, tok: Any, task: Any, records: list[dict], samples: int, max_new_tokens: int) -> dict:
    from rlad_megatron.tiny.sft import generate_accuracy

    greedy = generate_accuracy(model, tok, task, records, max_new_tokens=max_new_tokens)
    sampled = generate_accuracy(model, tok, task, records * samples, max_new_tokens=max_new_tokens, temperature=1.0,
                                seed=1)
    return {"greedy": round(greedy.accuracy, 4), "greedy_by_subset": greedy.by_difficulty,
            "sampled": round(sampled.accuracy, 4), "sampled_by_subset": sampled.by_difficulty}


def _train(kind: str, out: Path, shape: dict, records: list[dict], reference: str, steps: int, lr: float,
           seed: int, log) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model
    from rlad_megatron.tiny.sft import train_sft

    path = out / f"{kind}-{'-'.join(f'{k}{v}' for k, v in shape.items())}-{reference}-{steps}-{lr:g}-{seed}"
    if (path / "config.json").exists():
        log(f"{kind}: cached {path}")
        return path
    make_tiny_hf_model(path, family="llama", seed=seed, max_position_embeddings=256, **shape)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    stats = train_sft(model, tok, get_task("carry_trap", reference=reference), records, steps=steps, batch_size=32,
                      lr=lr, seed=seed)
    model.save_pretrained(path)
    log(f"{kind}: {steps} SFT steps on {reference} references, loss {stats.first_loss:.3f} -> {stats.last_loss:.3f} "
        f"({stats.seconds:.0f}s)")
    return path


class _SampleTargets:
    """A task view whose supervised target is the record's own ``completion`` (a teacher sample)."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def reference_completion(self, record: dict) -> str:
        return record["completion"]


def _teacher_samples(model: Any, tok: Any, task: Any, records: list[dict], max_new_tokens: int) -> list[dict]:
    """One temperature-1 sample of the teacher per record, kept when the verifier accepts it."""
    import torch

    from rlad_megatron.tiny.sft import _stop_ids

    stops = set(_stop_ids(model, tok, None))
    kept = []
    torch.manual_seed(2)
    for start in range(0, len(records), 64):
        chunk = records[start:start + 64]
        prompts = [task.encode_prompt(task.build_prompt(r, tok), tok) for r in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                                 temperature=1.0, top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=sorted(stops))
        for record, row in zip(chunk, out[:, width:].tolist()):
            ends = [i for i, t in enumerate(row) if t in stops]
            text = tok.decode(row[: ends[0]] if ends else row, skip_special_tokens=True)
            if ends and task.reward(text, record).correct:
                kept.append({**record, "completion": text})
    return kept


def _answer_digit_logprobs(model: Any, tok: Any, task: Any, records: list[dict]) -> list[float]:
    """Log-prob of the first answer digit (right after ``#### ``) of the CORRECT completion, teacher-forced."""
    import torch

    out = []
    for r in records:
        prompt = task.encode_prompt(task.build_prompt(r, tok), tok)
        text = task.reference_completion(r)
        cut = text.index("#### ") + len("#### ")
        prefix = tok(text[:cut], add_special_tokens=False)["input_ids"]
        digit = tok(text[cut], add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + prefix])).logits[0, -1].float()
        out.append(float(torch.log_softmax(logits, -1)[digit]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/carry_trap")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--max-digits", type=int, default=3)
    p.add_argument("--carry-fraction", type=float, default=None)
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--student-steps", type=int, default=400)
    p.add_argument("--samples", type=int, default=4, help="samples per test prompt for the sampled accuracy")
    p.add_argument("--probe-prompts", type=int, default=1600, help="training prompts the teacher answers for sft")
    p.add_argument("--probe-steps", type=int, default=100)
    p.add_argument("--probe-lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=47)
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.carry_trap.data import write_carry_trap_data
    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.tiny.sft import train_sft

    torch.set_num_threads(1)
    out = Path(a.out)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[carry_trap {time.perf_counter() - started:6.0f}s] {msg}", flush=True)

    files = write_carry_trap_data(str(out / "data"), n_train=a.train, n_test=a.test, max_digits=a.max_digits,
                                  carry_fraction=a.carry_fraction)
    train = [json.loads(line) for line in Path(files["train"]).read_text().splitlines()]
    test = [json.loads(line) for line in Path(files["test"]).read_text().splitlines()]
    task = get_task("carry_trap")
    carry = sum(r["difficulty"] == "carry" for r in test) / len(test)
    log(f"data: {len(train)} train, {len(test)} test ({carry:.3f} of the test sums carry out)")

    teacher_shape = dict(num_layers=2, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
    student_shape = dict(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2)
    teacher_dir = _train("teacher", out / "models", teacher_shape, train, "flawed", a.teacher_steps, 3e-3, 0, log)
    student_dir = _train("student", out / "models", student_shape, train, "correct", a.student_steps, 3e-3, 1, log)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()

    results: dict[str, Any] = {"settings": vars(a), "test_carry_fraction": carry}
    results["teacher"] = _accuracy(teacher, tok, task, test, a.samples, a.max_new_tokens)
    log(f"teacher: {results['teacher']}")
    results["student"] = _accuracy(student, tok, task, test, a.samples, a.max_new_tokens)
    log(f"student: {results['student']}")

    # TRRD's mechanism on the carry subset: where the student likes the correct leading digit much more than the
    # teacher (log-ratio above the clamp c = 1), the mixed ratio of a correct (A > 0) response is pushed above the
    # clip and that token gets no gradient; the teacher blocks learning it. Measured at the student's start.
    carry_test = [r for r in test if r["difficulty"] == "carry"]
    t_digit = _answer_digit_logprobs(teacher, tok, task, carry_test)
    s_digit = _answer_digit_logprobs(student, tok, task, carry_test)
    blocked = sum(s - t > 1.0 for s, t in zip(s_digit, t_digit)) / len(carry_test)
    results["carry_answer_digit"] = {"teacher_mean_logprob": sum(t_digit) / len(t_digit),
                                     "student_mean_logprob": sum(s_digit) / len(s_digit),
                                     "clamp_active_frac": blocked}
    log(f"carry prompts, correct first answer digit: {results['carry_answer_digit']}")

    probe = train[: a.probe_prompts]
    kept = _teacher_samples(teacher, tok, task, probe, a.max_new_tokens)
    kept_carry = sum(r["difficulty"] == "carry" for r in kept)
    log(f"sft probe: kept {len(kept)} of {len(probe)} teacher samples ({kept_carry} on carry prompts)")
    if not kept:
        raise SystemExit("the teacher solved none of the probe prompts: train it longer (--teacher-steps)")
    train_sft(student, tok, _SampleTargets(task), kept, steps=a.probe_steps, batch_size=32, lr=a.probe_lr, seed=3,
              warmup=0)
    student.eval()
    results["sft_probe"] = {"kept": len(kept), "kept_carry": kept_carry, "of": len(probe),
                            **_accuracy(student, tok, task, test, a.samples, a.max_new_tokens)}
    log(f"student after sft on filtered teacher samples: {results['sft_probe']}")
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out / "feasibility.json").write_text(json.dumps(results, indent=2))

    print("\n| model | greedy | plain | carry | sampled (T=1) | plain | carry |\n|---|---|---|---|---|---|---|")
    for name in ("teacher", "student", "sft_probe"):
        r = results[name]
        g, s = r["greedy_by_subset"], r["sampled_by_subset"]
        print(f"| {name} | {r['greedy']:.3f} | {g.get('plain', 0):.3f} | {g.get('carry', 0):.3f} | {r['sampled']:.3f} "
              f"| {s.get('plain', 0):.3f} | {s.get('carry', 0):.3f} |")
    d = results["carry_answer_digit"]
    print(f"\ncarry prompts, the correct answer's first digit: teacher log-prob {d['teacher_mean_logprob']:.2f}, student "
          f"{d['student_mean_logprob']:.2f}; student - teacher > 1 (TRRD's clamp active) on {d['clamp_active_frac']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
