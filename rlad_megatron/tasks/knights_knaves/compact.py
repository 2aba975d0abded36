"""Knights and Knaves in a compact form for tiny character-level models (the CPU comparison of issue 9).

The English K&K prompt is ~850 characters with its instructions; a tiny model on a 2-core CPU can neither read it
fast nor learn from it in minutes. This form keeps the same puzzles (same generator, unique solution, the same
Logic-RL reward and answer lines) but writes them in a few dozen characters, and gives the reference completion a
short solver trace that a small transformer can learn to execute.

Prompt: inhabitants are the letters A, B, C, ... in order; one line per speaker with the statement in the formal
syntax of :mod:`rlad_megatron.tasks.knights_knaves.logic`, literals written ``kB`` (B is a knight) and ``nB`` (B is a knave)::

    A: (kB & nA)
    B: ~kA

Reference completion: ``<think>`` holds a truth-table search in a fixed order (A varies slowest; ``k`` before
``n``). For each assignment it checks the speakers in order, ``+`` where the statement's truth matches the
speaker's role and ``-`` where not, stopping at the first ``-``; the search stops at the first assignment with all
``+`` (the unique solution), and ``<answer>`` copies it::

    <think>kk:- kn:+- nk:++</think>
    <answer>(1) A is a knave
    (2) B is a knight</answer>

Every step of the trace is one small lookup (one statement, one assignment), so a model that makes one wrong step
gets a wrong answer: accuracy falls with the number of inhabitants, which is what a distillation comparison needs.
"""
from __future__ import annotations

import random
from itertools import product
from typing import Any, Mapping

from rlad_megatron.tasks.knights_knaves.logic import Expr, parse_formal, solve, to_formal
from rlad_megatron.tasks.knights_knaves.task import KnightsKnavesTask, answer_text, make_puzzle

LETTERS = "ABCDEFGH"


def compact_statement(e: Expr) -> str:
    """A statement in the compact syntax: the formal syntax with ``kX`` / ``nX`` literals (X = inhabitant letter)."""
    kind = e[0]
    if kind in ("K", "N"):
        return f"{'k' if kind == 'K' else 'n'}{LETTERS[e[1]]}"  # type: ignore[index]
    if kind == "not":
        return "~" + compact_statement(e[1])  # type: ignore[arg-type]
    op = {"and": "&", "or": "|", "imp": "->", "iff": "<->"}[kind]
    return f"({compact_statement(e[1])} {op} {compact_statement(e[2])})"  # type: ignore[misc, arg-type]


def evaluate(e: Expr, assignment: tuple[bool, ...]) -> bool:
    """Truth of ``e`` when inhabitant i is a knight iff ``assignment[i]`` (plain recursion: the trace's reference)."""
    kind = e[0]
    if kind == "K":
        return assignment[e[1]]  # type: ignore[index]
    if kind == "N":
        return not assignment[e[1]]  # type: ignore[index]
    if kind == "not":
        return not evaluate(e[1], assignment)  # type: ignore[arg-type]
    a, b = evaluate(e[1], assignment), evaluate(e[2], assignment)  # type: ignore[misc, arg-type]
    return {"and": a and b, "or": a or b, "imp": (not a) or b, "iff": a == b}[kind]


def search_trace(statements: list[Expr]) -> tuple[str, tuple[bool, ...]]:
    """The truth-table search of the module docstring: (trace text, the first consistent assignment)."""
    steps = []
    for assignment in product((True, False), repeat=len(statements)):
        checks = ""
        for speaker, st in enumerate(statements):
            ok = evaluate(st, assignment) == assignment[speaker]
            checks += "+" if ok else "-"
            if not ok:
                break
        steps.append("".join("k" if x else "n" for x in assignment) + ":" + checks)
        if "-" not in checks:
            return " ".join(steps), assignment
    raise ValueError("the puzzle has no consistent assignment")


def make_compact_record(rng: random.Random, n: int, record_id: str) -> dict[str, Any]:
    """One compact K&K record; same fields as :func:`rlad_megatron.tasks.knights_knaves.task.make_record` plus ``trace``."""
    if not 2 <= n <= len(LETTERS):
        raise ValueError(f"compact K&K puzzles have 2..{len(LETTERS)} inhabitants, got {n}")
    _, statements, solution = make_puzzle(rng, n)
    names = list(LETTERS[:n])
    trace, found = search_trace(statements)
    if list(found) != solution:  # the generator guarantees uniqueness; the trace must agree with the solver
        raise AssertionError(f"trace found {found}, solver {solution}")
    prompt = "\n".join(f"{names[i]}: {compact_statement(st)}" for i, st in enumerate(statements))
    return {"id": record_id, "prompt": prompt, "answer": answer_text(names, solution), "names": names,
            "solution": solution, "statements": [to_formal(s) for s in statements], "n_people": n,
            "difficulty": f"ppl{n}", "trace": trace}


def generate_compact_records(n_per_size: int, seed: int, sizes: tuple[int, ...] = (2, 3, 4),
                             id_prefix: str = "kkc") -> list[dict[str, Any]]:
    """``n_per_size`` compact puzzles per size, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [make_compact_record(rng, n, f"{id_prefix}-{n}-{k}") for n in sizes for k in range(n_per_size)]


class KnightsKnavesCompactTask(KnightsKnavesTask):
    """K&K with the compact prompt and a solver-trace reference completion; the reward is the Logic-RL reward of
    :class:`KnightsKnavesTask` (format + every role right)."""

    name = "knights_knaves_compact"

    def plain_prompt(self, record: Mapping[str, Any]) -> str:
        return f"{record['prompt']}\n"

    def user_message(self, record: Mapping[str, Any]) -> str:
        return f"{record['prompt']}\nWho is a knight and who is a knave?"

    def reference_completion(self, record: Mapping[str, Any]) -> str:
        trace = record.get("trace")
        if not isinstance(trace, str):
            n = len(record["names"])
            trace, _ = search_trace([parse_formal(s, n) for s in record["statements"]])
        return f"<think>{trace}</think>\n<answer>{record['answer']}</answer>"
