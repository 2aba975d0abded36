"""Knights and Knaves puzzles: procedural generator (unique solution only), natural language, and the task.

Record fields: ``id``, ``prompt`` (the puzzle in natural language), ``answer`` (the reference answer text,
``"(1) Zoey is a knight\\n(2) Oliver is a knave"``), ``names`` (list[str]), ``solution`` (list[bool], True = knight),
``statements`` (list[str] in the formal syntax of :mod:`rlad_megatron.tasks.knights_knaves.logic`), ``n_people`` (int) and
``difficulty`` (``"ppl<n>"``, the paper's PPL2..PPL8 columns).

Statements follow the K&K benchmark's shapes: a literal ("X is a knight", "X is a knave", "X is not a knight") or two
literals joined by and / or / implication / equivalence (depth at most 2), so that every English rendering is
unambiguous. Only puzzles with exactly one consistent assignment are emitted (checked by the exact solver).
"""
from __future__ import annotations

import random
import re
from typing import Any, Mapping

from rlad_megatron.tasks.knights_knaves.logic import Expr, consistent_assignments, parse_formal, solve, to_formal
from rlad_megatron.tasks.base import BASE_SCHEMA, RecordError, Task
from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.tasks.knights_knaves.reward import KKRewardConfig, kk_reward

NAMES = (
    "Zoey Oliver Ethan Mia Liam Ava Noah Emma James Sofia Lucas Chloe Henry Grace Jack Lily Owen Ella Leo Aria "
    "Samuel Harper Daniel Amelia Logan Nora Jacob Ruby Isaac Hazel Wyatt Violet Aiden Stella Caleb Lucy Max Alice "
    "Ben Clara"
).split()

_INTRO = ("A very special island is inhabited only by knights and knaves. Knights always tell the truth, and knaves "
          "always lie. You meet {n} inhabitants: {names}.")
_QUESTION = "So who is a knight and who is a knave?"
INSTRUCTIONS = ("Think it through inside <think> </think>, then state the identity of every inhabitant inside "
                "<answer> </answer>, one per line, e.g. <answer>(1) Zoey is a knight\n(2) Oliver is a knave</answer>.")
SYSTEM_PROMPT = ("You are a helpful assistant. You first think about the reasoning process and then give the answer. "
                 "The reasoning is enclosed in <think> </think> tags and the answer in <answer> </answer> tags.")
_KINDS = ("lit", "lit", "and", "or", "imp", "iff")
_VERBS = ("says", "claims", "tells you", "states")


def _literal(rng: random.Random, j: int) -> Expr:
    return rng.choice([("K", j), ("N", j), ("not", ("K", j)), ("not", ("N", j))])


def random_statement(rng: random.Random, n: int) -> Expr:
    """One random statement of depth <= 2: a literal, or two literals about two different inhabitants under
    and/or/imp/iff (never "X is a knave and X is a knight")."""
    kind = rng.choice(_KINDS)
    if kind == "lit":
        return _literal(rng, rng.randrange(n))
    i, j = rng.sample(range(n), 2)
    return (kind, _literal(rng, i), _literal(rng, j))


def to_english(e: Expr, names: list[str]) -> str:
    """The English form of a statement of the generator's shapes (literals, or one connective over literals)."""
    kind = e[0]
    if kind == "K":
        return f"{names[e[1]]} is a knight"  # type: ignore[index]
    if kind == "N":
        return f"{names[e[1]]} is a knave"  # type: ignore[index]
    if kind == "not":
        inner = e[1]
        if inner[0] in ("K", "N"):  # type: ignore[index]
            role = "knight" if inner[0] == "K" else "knave"  # type: ignore[index]
            return f"{names[inner[1]]} is not a {role}"  # type: ignore[index]
        return f"it is not the case that {to_english(inner, names)}"  # type: ignore[arg-type]
    a, b = to_english(e[1], names), to_english(e[2], names)  # type: ignore[misc, arg-type]
    return {"and": f"{a} and {b}", "or": f"{a} or {b}", "imp": f"if {a} then {b}",
            "iff": f"{a} if and only if {b}"}[kind]


def answer_text(names: list[str], solution: list[bool]) -> str:
    """The reference answer: ``(1) Zoey is a knight`` lines."""
    return "\n".join(f"({i + 1}) {nm} is a {'knight' if k else 'knave'}" for i, (nm, k) in enumerate(zip(names, solution)))


def _join_names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def make_puzzle(rng: random.Random, n: int, max_tries: int = 10_000) -> tuple[list[str], list[Expr], list[bool]]:
    """(names, statements, solution) of one puzzle with exactly one solution.

    Draw n statements; then, while the puzzle has no or several solutions, redraw one random speaker's statement
    (a local search that converges far faster than redrawing all statements for 7-8 inhabitants).
    """
    if not 2 <= n <= len(NAMES):
        raise ValueError(f"n_people must be in 2..{len(NAMES)}, got {n}")
    names = rng.sample(NAMES, n)
    statements = [random_statement(rng, n) for _ in range(n)]
    for _ in range(max_tries):
        ok = consistent_assignments(statements)
        if ok and ok & (ok - 1) == 0:  # exactly one bit set
            m = ok.bit_length() - 1
            return names, statements, [bool((m >> i) & 1) for i in range(n)]
        statements[rng.randrange(n)] = random_statement(rng, n)
    raise RuntimeError(f"no unique-solution puzzle with {n} inhabitants in {max_tries} tries")


def make_record(rng: random.Random, n: int, record_id: str) -> dict[str, Any]:
    """One K&K record (see the module docstring for the fields)."""
    names, statements, solution = make_puzzle(rng, n)
    lines = [_INTRO.format(n=n, names=_join_names(names))]
    for i, st in enumerate(statements):
        text = to_english(st, names)
        lines.append(f'{names[i]} {rng.choice(_VERBS)}, "{text[0].upper()}{text[1:]}."')
    lines.append(_QUESTION)
    return {"id": record_id, "prompt": " ".join(lines), "answer": answer_text(names, solution), "names": names,
            "solution": solution, "statements": [to_formal(s) for s in statements], "n_people": n,
            "difficulty": f"ppl{n}"}


def generate_records(n_per_size: int, seed: int, sizes: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8),
                     id_prefix: str = "kk") -> list[dict[str, Any]]:
    """``n_per_size`` puzzles for each number of inhabitants in ``sizes``, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [make_record(rng, n, f"{id_prefix}-{n}-{k}") for n in sizes for k in range(n_per_size)]


_ANSWER_LINE = re.compile(r"\(\d+\)\s*([A-Za-z]+) is a (knight|knave)")


class KnightsKnavesTask(Task):
    """K&K with the Logic-RL reward (format part + answer part, see :class:`KKRewardConfig`).

    Accepts this generator's records, the K&K benchmark's rows (``quiz``, ``names``, ``solution``,
    ``solution_text_format``) and Logic-RL parquet rows (chat ``prompt``, ``reward_model.ground_truth``).
    """

    name = "knights_knaves"
    schema = {**BASE_SCHEMA, "names": list, "solution": list}
    system_prompt = SYSTEM_PROMPT

    def __init__(self, **reward_options: Any) -> None:
        self.reward_config = KKRewardConfig(**reward_options)

    def to_record(self, row: Mapping[str, Any]) -> dict[str, Any]:
        # Columns absent from a row arrive as None (arrow unifies the columns of a file).
        rec = {k: v for k, v in row.items() if v is not None}
        if "quiz" in rec and "prompt" not in rec:
            rec["prompt"] = rec["quiz"]
        gt = rec["reward_model"].get("ground_truth") if isinstance(rec.get("reward_model"), dict) else None
        if isinstance(gt, dict) and "solution_text_format" not in rec:
            rec["solution_text_format"] = gt.get("solution_text_format")
        if "answer" not in rec and isinstance(rec.get("solution_text_format"), str):
            rec["answer"] = rec["solution_text_format"]
        if isinstance(rec.get("answer"), str) and ("names" not in rec or "solution" not in rec):
            pairs = _ANSWER_LINE.findall(rec["answer"])
            if not pairs:
                raise RecordError("answer", "no '(1) Name is a knight/knave' lines to take names/solution from")
            rec.setdefault("names", [p[0] for p in pairs])
            rec.setdefault("solution", [p[1] == "knight" for p in pairs])
        names, sol = rec.get("names"), rec.get("solution")
        if isinstance(names, list) and isinstance(sol, list):
            if len(names) != len(sol) or not all(isinstance(x, bool) for x in sol):
                raise RecordError("solution", "must be one bool (True = knight) per name")
            if not all(isinstance(x, str) and x for x in names):
                raise RecordError("names", "must be non-empty strings")
            rec.setdefault("n_people", len(names))
            rec.setdefault("difficulty", f"ppl{len(names)}")
        statements = rec.get("statements")
        if isinstance(statements, list) and statements and all(isinstance(s, str) for s in statements):
            try:
                exprs = [parse_formal(s, len(statements)) for s in statements]
            except ValueError as exc:
                raise RecordError("statements", str(exc)) from exc
            if isinstance(sol, list) and solve(exprs) != [sol]:
                raise RecordError("solution", "is not the unique solution of the formal statements")
        return rec

    def user_message(self, record: Mapping[str, Any]) -> str:
        return f"{record['prompt']}\n{INSTRUCTIONS}"

    def plain_prompt(self, record: Mapping[str, Any]) -> str:
        return f"{SYSTEM_PROMPT}\n{self.user_message(record)}\n"

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        return kk_reward(completion, list(record["names"]), list(record["solution"]), self.reward_config)

    def reference_completion(self, record: Mapping[str, Any]) -> str:
        """A minimal well-formatted answer (for SFT smoke tests; carries no reasoning)."""
        return f"<think> </think>\n<answer>{record['answer']}</answer>"
