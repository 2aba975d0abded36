"""Knights and Knaves: the formal statement syntax, its parser/printer, and the exact solver.

Formal syntax (one statement per inhabitant; statement ``i`` is said by inhabitant ``i``; indices are 0-based)::

    expr := "K" <i>                 inhabitant i is a knight
          | "N" <i>                 inhabitant i is a knave (same as ~K<i>)
          | "~" expr                not
          | "(" expr " & " expr ")"   and
          | "(" expr " | " expr ")"   or
          | "(" expr " -> " expr ")"  implication
          | "(" expr " <-> " expr ")" equivalence

Binary forms are always parenthesised, so there is no precedence to remember. Spaces are optional when parsing.
Example: ``"(K1 -> ~N2)"`` = "if inhabitant 1 is a knight then inhabitant 2 is not a knave".

Solver: knights tell the truth and knaves lie, so an assignment is consistent iff for every speaker
``knight(i) <-> statement(i)``. All ``2**n`` assignments are checked at once with truth tables held as Python
integers (bit ``m`` of a table = value under assignment ``m``, where bit ``i`` of ``m`` = inhabitant ``i`` is a knight),
which keeps generation of 8-inhabitant puzzles fast.
"""
from __future__ import annotations

from typing import Union

Expr = Union[tuple[str, int], tuple[str, "Expr"], tuple[str, "Expr", "Expr"]]
#: Binary operators: formal symbol per node kind.
BINARY = {"and": "&", "or": "|", "imp": "->", "iff": "<->"}
_SYMBOL_TO_KIND = {v: k for k, v in BINARY.items()}


class FormulaError(ValueError):
    """A statement string that does not follow the formal syntax."""


def to_formal(e: Expr) -> str:
    """Print an expression in the formal syntax."""
    kind = e[0]
    if kind in ("K", "N"):
        return f"{kind}{e[1]}"
    if kind == "not":
        return "~" + to_formal(e[1])  # type: ignore[arg-type]
    return f"({to_formal(e[1])} {BINARY[kind]} {to_formal(e[2])})"  # type: ignore[misc, arg-type]


def parse_formal(text: str, n_people: int | None = None) -> Expr:
    """Parse the formal syntax; ``n_people`` bounds the indices when given."""
    s = text.replace(" ", "")
    expr, pos = _parse(s, 0, n_people, text)
    if pos != len(s):
        raise FormulaError(f"unexpected {s[pos:pos + 10]!r} at position {pos} in {text!r}")
    return expr


def _parse(s: str, pos: int, n: int | None, original: str) -> tuple[Expr, int]:
    if pos >= len(s):
        raise FormulaError(f"unexpected end of statement {original!r}")
    c = s[pos]
    if c in "KN":
        end = pos + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        if end == pos + 1:
            raise FormulaError(f"{c} without an inhabitant index at position {pos} in {original!r}")
        idx = int(s[pos + 1:end])
        if n is not None and idx >= n:
            raise FormulaError(f"inhabitant index {idx} out of range for {n} inhabitants in {original!r}")
        return (c, idx), end
    if c == "~":
        inner, end = _parse(s, pos + 1, n, original)
        return ("not", inner), end
    if c == "(":
        left, pos = _parse(s, pos + 1, n, original)
        for sym in ("<->", "->", "&", "|"):
            if s.startswith(sym, pos):
                right, pos = _parse(s, pos + len(sym), n, original)
                if pos >= len(s) or s[pos] != ")":
                    raise FormulaError(f"missing ')' at position {pos} in {original!r}")
                return (_SYMBOL_TO_KIND[sym], left, right), pos + 1
        raise FormulaError(f"expected one of & | -> <-> at position {pos} in {original!r}")
    raise FormulaError(f"unexpected {c!r} at position {pos} in {original!r}")


def knight_tables(n: int) -> list[int]:
    """Truth table of "inhabitant i is a knight" over all 2**n assignments, for each i."""
    return [sum(1 << m for m in range(1 << n) if (m >> i) & 1) for i in range(n)]


def truth_table(e: Expr, tables: list[int], full: int) -> int:
    """Truth table of ``e`` (``full`` = all 2**n bits set)."""
    kind = e[0]
    if kind == "K":
        return tables[e[1]]  # type: ignore[index]
    if kind == "N":
        return full & ~tables[e[1]]  # type: ignore[index]
    if kind == "not":
        return full & ~truth_table(e[1], tables, full)  # type: ignore[arg-type]
    a = truth_table(e[1], tables, full)  # type: ignore[arg-type]
    b = truth_table(e[2], tables, full)  # type: ignore[misc, arg-type]
    if kind == "and":
        return a & b
    if kind == "or":
        return a | b
    if kind == "imp":
        return (full & ~a) | b
    if kind == "iff":
        return full & ~(a ^ b)
    raise FormulaError(f"unknown node {kind!r}")


def consistent_assignments(statements: list[Expr]) -> int:
    """Bitmask over assignments m that make every speaker's statement true iff the speaker is a knight."""
    n = len(statements)
    tables, full = knight_tables(n), (1 << (1 << n)) - 1
    ok = full
    for i, st in enumerate(statements):
        ok &= full & ~(tables[i] ^ truth_table(st, tables, full))
        if not ok:
            break
    return ok


def solve(statements: list[Expr]) -> list[list[bool]]:
    """Every consistent assignment (True = knight), in increasing assignment order."""
    n, ok = len(statements), consistent_assignments(statements)
    return [[bool((m >> i) & 1) for i in range(n)] for m in range(1 << n) if (ok >> m) & 1]
