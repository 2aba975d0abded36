"""Tiny stand-ins for your models and data, so that ``run.yaml`` runs as it is (about a minute on 2 CPU cores).

    python -m examples.custom_reward.prepare [--out examples/custom_reward/work]

Writes ``OUT/student`` and ``OUT/teacher`` (Hugging Face folders with the char tokenizer: the teacher trained on the
additions' reference chains of thought, the student briefly warm-started so that it sometimes earns reward) and
``OUT/train.jsonl`` in a schema of its own (``question``, ``solution.value``, ``level``), which run.yaml maps with
``data.fields``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

STUDENT = dict(family="llama", num_layers=2, hidden_size=128, intermediate_size=256, num_heads=2, num_kv_heads=2)
TEACHER = STUDENT  # as large as the student only to keep the example fast


def own_rows(records: list[dict]) -> list[dict]:
    """The demo's addition records in the example's own schema."""
    return [{"question": r["prompt"], "solution": {"value": int(r["answer"])}, "level": r["difficulty"]}
            for r in records]


def write_data(path: Path, num_prompts: int = 64, seed: int = 0) -> list[dict]:
    """``path`` (jsonl) in the example's schema; returns the canonical records it came from."""
    from rlad_megatron.tasks.arithmetic.task import generate_records

    records = generate_records(num_prompts, seed=seed, min_digits=1, max_digits=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in own_rows(records)))
    return records


def _trained(out: Path, records: list[dict], *, seed: int, steps: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model
    from rlad_megatron.tiny.sft import train_sft

    if (out / "config.json").exists():
        return
    make_tiny_hf_model(out, seed=seed, **STUDENT)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # a tiny model gains nothing from more threads; on a busy machine they spin
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    train_sft(model, tokenizer, get_task("arithmetic"), records, steps=steps, batch_size=32, lr=3e-3, seed=seed,
              warmup=5)
    model.save_pretrained(out)


def prepare(out: Path) -> dict[str, str]:
    """Write the data and the two models into ``out`` (models kept when already there); returns their paths."""
    out = Path(out)
    records = write_data(out / "train.jsonl")
    _trained(out / "teacher", records, seed=5, steps=150)
    _trained(out / "student", records, seed=1, steps=60)
    return {"student": str(out / "student"), "teacher": str(out / "teacher"), "train": str(out / "train.jsonl")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "work")
    args = parser.parse_args(argv)
    for name, path in prepare(args.out).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
