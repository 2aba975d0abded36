"""Write the ``carry_trap`` task's train/test jsonl files, deterministically from a seed.

    python -m rlad_megatron.tasks.carry_trap.data OUT_DIR [--train N] [--test N] [--seed S] [--max-digits D]
        [--carry-fraction F]

Train and test prompts never overlap; test ids are ``test-<i>``, train ids ``train-<i>``. The supervised targets
(the flawed teacher's, the correct ones for a student's warm start) come from ``CarryTrapTask(reference=...)``.
"""
from __future__ import annotations

import argparse
import json
import os

from rlad_megatron.atomic_write import atomic_file
from rlad_megatron.tasks.carry_trap.task import generate_records


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with atomic_file(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_carry_trap_data(out_dir: str, n_train: int = 4000, n_test: int = 400, seed: int = 0, min_digits: int = 1,
                          max_digits: int = 3, carry_fraction: float | None = None) -> dict[str, str]:
    """``train.jsonl`` and ``test.jsonl`` in ``out_dir`` (test prompts distinct, train avoiding them); {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    test: list[dict] = []
    seen: set[str] = set()
    for r in generate_records(20 * n_test + 100, seed=seed * 1_000_003, min_digits=min_digits,
                              max_digits=max_digits, carry_fraction=carry_fraction):
        if len(test) < n_test and r["prompt"] not in seen:
            seen.add(r["prompt"])
            test.append({**r, "id": f"test-{len(test)}"})
    if len(test) < n_test:
        raise ValueError(f"cannot draw {n_test} distinct test prompts with {min_digits}..{max_digits} digits")
    train: list[dict] = []
    round_ = 1
    while len(train) < n_train:
        for r in generate_records(n_train, seed=seed * 1_000_003 + round_, min_digits=min_digits,
                                  max_digits=max_digits, carry_fraction=carry_fraction):
            if len(train) < n_train and r["prompt"] not in seen:
                train.append({**r, "id": f"train-{len(train)}"})
        round_ += 1
        if round_ > 1000:
            raise ValueError(f"cannot draw {n_train} train prompts outside the test set; lower n or raise max_digits")
    paths = {name: os.path.join(out_dir, f"{name}.jsonl") for name in ("train", "test")}
    _write_jsonl(paths["train"], train)
    _write_jsonl(paths["test"], test)
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-digits", type=int, default=1)
    p.add_argument("--max-digits", type=int, default=3)
    p.add_argument("--carry-fraction", type=float, default=None)
    a = p.parse_args(argv)
    paths = write_carry_trap_data(a.out_dir, a.train, a.test, a.seed, a.min_digits, a.max_digits, a.carry_fraction)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
