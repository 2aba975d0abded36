"""The compact Knights and Knaves form: rendering, the solver trace, the task's prompt/reference/reward."""
import random
from itertools import product

import pytest

from rlad_megatron.tasks.knights_knaves.compact import (compact_statement, evaluate, generate_compact_records,
                                           make_compact_record, search_trace)
from rlad_megatron.tasks.knights_knaves.data import write_kk_data
from rlad_megatron.tasks.knights_knaves.logic import consistent_assignments, parse_formal
from rlad_megatron.tasks.registry import get_task


def test_compact_statement_renders_letters_and_operators():
    e = ("iff", ("not", ("N", 3)), ("K", 0))
    assert compact_statement(e) == "(~nD <-> kA)"
    assert compact_statement(("imp", ("K", 1), ("N", 2))) == "(kB -> nC)"


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_evaluate_matches_the_truth_table_solver(n):
    rng = random.Random(n)
    for k in range(30):
        rec = make_compact_record(rng, n, f"x{k}")
        statements = [parse_formal(s, n) for s in rec["statements"]]
        ok = consistent_assignments(statements)
        for m in range(1 << n):
            assignment = tuple(bool((m >> i) & 1) for i in range(n))
            plain = all(evaluate(st, assignment) == assignment[i] for i, st in enumerate(statements))
            assert plain == bool((ok >> m) & 1)


def test_trace_follows_the_search_order_and_stops_at_the_solution():
    # A: "B is a knave", B: "A and B are both knights" -> A knight, B knave (unique).
    statements = [("N", 1), ("and", ("K", 0), ("K", 1))]
    trace, found = search_trace(statements)
    # kk: A says B knave (false) but A knight -> '-'. kn: A ok '+', B says (kA & kB) false, B knave -> '+'.
    assert trace == "kk:- kn:++"
    assert found == (True, False)


def test_trace_is_checked_step_by_step_on_many_puzzles():
    for rec in generate_compact_records(40, seed=3, sizes=(2, 3, 4)):
        n = rec["n_people"]
        statements = [parse_formal(s, n) for s in rec["statements"]]
        steps = rec["trace"].split(" ")
        order = list(product((True, False), repeat=n))
        assert len(steps) <= len(order)
        for step, assignment in zip(steps, order):
            roles, checks = step.split(":")
            assert roles == "".join("k" if x else "n" for x in assignment)
            expected = ""
            for i, st in enumerate(statements):
                good = evaluate(st, assignment) == assignment[i]
                expected += "+" if good else "-"
                if not good:
                    break
            assert checks == expected
        assert steps[-1].endswith("+" * n) and "-" not in steps[-1]
        assert [c == "k" for c in steps[-1].split(":")[0]] == rec["solution"]


def test_task_prompt_reference_and_reward():
    task = get_task("knights_knaves_compact")
    rec = task.to_record(make_compact_record(random.Random(0), 3, "r0"))
    prompt = task.plain_prompt(rec)
    assert prompt.count("\n") == 3 and prompt.startswith("A: ") and len(prompt) < 80
    ref = task.reference_completion(rec)
    assert ref.startswith("<think>") and "</think>\n<answer>(1) A is a" in ref
    assert task.reward(ref, rec).correct and task.reward(ref, rec).score == 3.0
    flipped = ref.replace("is a knight", "is a KNAVE").replace("is a knave", "is a knight").replace("KNAVE", "knave")
    result = task.reward(flipped, rec)
    assert result.format_ok and not result.correct
    assert not task.reward("kk:++", rec).format_ok
    # Without the stored trace (e.g. rows from another writer) the trace is recomputed from the statements.
    assert task.reference_completion({k: v for k, v in rec.items() if k != "trace"}) == ref


def test_write_kk_data_compact_is_disjoint_and_deterministic(tmp_path):
    a = write_kk_data(str(tmp_path / "a"), train_per_size=20, test_per_size=5, seed=1, train_sizes=(2, 3),
                      test_sizes=(2, 3), make=make_compact_record)
    b = write_kk_data(str(tmp_path / "b"), train_per_size=20, test_per_size=5, seed=1, train_sizes=(2, 3),
                      test_sizes=(2, 3), make=make_compact_record)
    assert open(a["train"]).read() == open(b["train"]).read()
    import json
    train = [json.loads(x) for x in open(a["train"])]
    test = [json.loads(x) for x in open(a["test"])]
    assert len(train) == 40 and len(test) == 10
    assert not {tuple(r["statements"]) for r in train} & {tuple(r["statements"]) for r in test}
    assert all("trace" in r and r["names"] == list("ABC"[:r["n_people"]]) for r in train)


def test_too_many_inhabitants_is_refused():
    with pytest.raises(ValueError, match="2..8"):
        make_compact_record(random.Random(0), 9, "x")
