"""Write Knights and Knaves train/test jsonl files, deterministically from a seed.

    python -m rlad_megatron.tasks.knights_knaves.data OUT_DIR [--train-per-size N] [--test-per-size M] [--seed S]

Defaults follow the Logic-RL / paper setup: training puzzles with 3..7 inhabitants, a test split of 100 puzzles for
each size 2..8 (the paper's PPL2..PPL8 columns; evaluation groups by the records' ``difficulty`` = ``ppl<n>``).
No test puzzle (same names and statements) appears in train. Ids: ``kk-train-<n>-<i>``, ``kk-test-<n>-<i>``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
from typing import Any, Callable

from rlad_megatron.atomic_write import atomic_file
from rlad_megatron.tasks.knights_knaves.task import make_record

#: ``make(rng, n_people, record_id) -> record``: the English puzzles, or
#: :func:`rlad_megatron.tasks.knights_knaves.compact.make_compact_record` for the compact form.
RecordMaker = Callable[[random.Random, int, str], dict[str, Any]]

TRAIN_SIZES: tuple[int, ...] = (3, 4, 5, 6, 7)
TEST_SIZES: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r["names"]), tuple(r["statements"])


def _draw(rng: random.Random, sizes: tuple[int, ...], per_size: int, prefix: str, taken: set,
          make: RecordMaker = make_record) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        count, tries = 0, 0
        while count < per_size:
            tries += 1
            if tries > 100 * per_size + 1000:
                raise ValueError(f"cannot draw {per_size} distinct {n}-inhabitant puzzles for {prefix}")
            r = make(rng, n, f"kk-{prefix}-{n}-{count}")
            if _key(r) in taken:
                continue
            taken.add(_key(r))
            out.append(r)
            count += 1
    return out


def write_kk_data(out_dir: str, train_per_size: int = 1000, test_per_size: int = 100, seed: int = 0,
                  train_sizes: tuple[int, ...] = TRAIN_SIZES, test_sizes: tuple[int, ...] = TEST_SIZES,
                  make: RecordMaker = make_record) -> dict[str, str]:
    """Write ``train.jsonl`` and ``test.jsonl`` into ``out_dir``; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    taken: set = set()
    test = _draw(rng, test_sizes, test_per_size, "test", taken, make)
    train = _draw(rng, train_sizes, train_per_size, "train", taken, make)
    paths = {}
    for name, rows in (("train", train), ("test", test)):
        paths[name] = os.path.join(out_dir, f"{name}.jsonl")
        with atomic_file(paths[name], "w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--train-per-size", type=int, default=1000)
    p.add_argument("--test-per-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name, path in write_kk_data(a.out_dir, a.train_per_size, a.test_per_size, a.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
