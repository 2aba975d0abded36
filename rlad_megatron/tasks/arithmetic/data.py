"""Write the CPU demo's train/test jsonl files (multi-digit addition), deterministically from a seed.

    python -m rlad_megatron.tasks.arithmetic.data OUT_DIR [--train N] [--test N] [--seed S] [--max-digits D]

Train and test prompts never overlap (test is drawn first, without repeats; train avoids test prompts). Test ids are
``test-<i>``, train ids ``train-<i>``. Also writes ``sft.jsonl``: train records with the reference completion in
``completion`` (the teacher's supervised pre-training targets; eos is appended at tokenization).
"""
from __future__ import annotations

import argparse
import json
import os

from rlad_megatron.atomic_write import atomic_file
from rlad_megatron.tasks.arithmetic.task import ArithmeticTask, generate_records


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with atomic_file(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _draw(n: int, seed: int, min_digits: int, max_digits: int, prefix: str, exclude: set[str],
          unique: bool = False) -> list[dict]:
    """n records whose prompts avoid ``exclude`` (and each other when ``unique``), drawn in seeded rounds."""
    out: list[dict] = []
    taken = set(exclude)
    for round_ in range(1000):
        for r in generate_records(max(n, 16), seed=seed * 1_000_003 + round_, min_digits=min_digits,
                                  max_digits=max_digits):
            if len(out) < n and r["prompt"] not in taken:
                out.append({**r, "id": f"{prefix}-{len(out)}"})
                if unique:
                    taken.add(r["prompt"])
        if len(out) == n:
            return out
    raise ValueError(f"cannot draw {n} {prefix} prompts with {min_digits}..{max_digits} digits "
                     f"(too few distinct problems); lower n or raise max_digits")


def write_demo_data(out_dir: str, n_train: int = 4000, n_test: int = 200, seed: int = 0, min_digits: int = 1,
                    max_digits: int = 5) -> dict[str, str]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``sft.jsonl`` into ``out_dir``; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    test = _draw(n_test, seed, min_digits, max_digits, "test", exclude=set(), unique=True)
    train = _draw(n_train, seed + 1, min_digits, max_digits, "train", exclude={r["prompt"] for r in test})
    task = ArithmeticTask()
    sft = [{**r, "completion": task.reference_completion(r)} for r in train]
    paths = {name: os.path.join(out_dir, f"{name}.jsonl") for name in ("train", "test", "sft")}
    _write_jsonl(paths["train"], train)
    _write_jsonl(paths["test"], test)
    _write_jsonl(paths["sft"], sft)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-digits", type=int, default=1)
    p.add_argument("--max-digits", type=int, default=5)
    a = p.parse_args(argv)
    for name, path in write_demo_data(a.out_dir, a.train, a.test, a.seed, a.min_digits, a.max_digits).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
