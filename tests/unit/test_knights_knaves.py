"""K&K generator: every size 2..8 checked by an independent brute-force solver, on both the formal statements and
the English sentences; formal syntax round trip; records load through the dataset API."""
from __future__ import annotations

import itertools
import json
import re

import pytest

from rlad_megatron.tasks.knights_knaves.logic import FormulaError, parse_formal, solve, to_formal
from rlad_megatron.tasks.knights_knaves.task import KnightsKnavesTask, generate_records


class B:
    """A boolean with operators for the formal syntax (independent of the product's evaluator)."""

    def __init__(self, v: bool) -> None:
        self.v = v

    def __and__(self, o: "B") -> "B":
        return B(self.v and o.v)

    def __or__(self, o: "B") -> "B":
        return B(self.v or o.v)

    def __invert__(self) -> "B":
        return B(not self.v)

    def __rshift__(self, o: "B") -> "B":  # implication
        return B((not self.v) or o.v)

    def __eq__(self, o: object) -> "B":  # type: ignore[override]  # equivalence
        return B(self.v == o.v)  # type: ignore[attr-defined]


def formal_to_python(s: str) -> str:
    s = s.replace("<->", "==").replace("->", ">>")
    return re.sub(r"([KN])(\d+)", lambda m: f"x[{m.group(2)}]" if m.group(1) == "K" else f"(~x[{m.group(2)}])", s)


def brute_force_formal(statements: list[str]) -> list[tuple[bool, ...]]:
    code = [compile(formal_to_python(s), "<kk>", "eval") for s in statements]
    n = len(statements)
    sols = []
    for bits in itertools.product([False, True], repeat=n):
        x = [B(b) for b in bits]
        if all(eval(c, {"x": x}).v == bits[i] for i, c in enumerate(code)):  # noqa: S307 - test-only, own strings
            sols.append(bits)
    return sols


_LIT = re.compile(r"^([A-Za-z]+) is (not )?a (knight|knave)$")


def english_value(text: str, who: dict[str, bool]) -> bool:
    """Truth of one English statement of the generator's shapes under an assignment."""
    def lit(t: str) -> bool:
        m = _LIT.match(t)
        assert m, f"unexpected literal {t!r}"
        v = who[m.group(1)] == (m.group(3) == "knight")
        return not v if m.group(2) else v

    if text.startswith("If "):  # names are capitalised, so only "If" needs care
        a, b = text[3:].split(" then ")
        return (not lit(a)) or lit(b)
    for sep, fn in ((" if and only if ", lambda a, b: a == b), (" and ", lambda a, b: a and b),
                    (" or ", lambda a, b: a or b)):
        if sep in text:
            a, b = text.split(sep)
            return fn(lit(a), lit(b))
    return lit(text)


def brute_force_english(prompt: str, names: list[str]) -> list[tuple[bool, ...]]:
    said = re.findall(r'([A-Za-z]+) (?:says|claims|tells you|states), "([^"]*)\."', prompt)
    assert [s for s, _ in said] == names
    sols = []
    for bits in itertools.product([False, True], repeat=len(names)):
        who = dict(zip(names, bits))
        if all(english_value(text, who) == who[speaker] for speaker, text in said):
            sols.append(bits)
    return sols


@pytest.mark.parametrize("n", range(2, 9))
def test_generated_puzzles_have_exactly_the_recorded_solution(n: int) -> None:
    for rec in generate_records(12, seed=100 + n, sizes=(n,)):
        assert rec["n_people"] == n == len(rec["names"]) == len(rec["statements"]) and rec["difficulty"] == f"ppl{n}"
        want = [tuple(rec["solution"])]
        assert brute_force_formal(rec["statements"]) == want
        assert brute_force_english(rec["prompt"], rec["names"]) == want
        assert KnightsKnavesTask().reward(f"<think>x</think><answer>{rec['answer']}</answer>", rec).correct


def test_generation_is_deterministic_with_unique_ids() -> None:
    a = generate_records(3, seed=1)
    assert a == generate_records(3, seed=1) and a != generate_records(3, seed=2)
    assert len({r["id"] for r in a}) == len(a) == 21


def test_formal_syntax_round_trip_and_errors() -> None:
    for s in ["K0", "~N3", "(K1 -> ~N2)", "((K0 & N1) <-> ~(K2 | K3))", "~~K1"]:
        assert to_formal(parse_formal(s)) == s
        assert to_formal(parse_formal(s.replace(" ", ""))) == s
    assert solve([parse_formal("N0"), parse_formal("K0")]) == []
    for bad, msg in [("K", "without an inhabitant"), ("(K0 K1)", "expected one of"), ("(K0 & K1", "missing"),
                     ("K0)", "unexpected"), ("K9", "out of range"), ("", "end of statement")]:
        with pytest.raises(FormulaError, match=msg):
            parse_formal(bad, n_people=4)


def test_kk_records_and_benchmark_rows_load_through_dataset_api(tmp_path) -> None:
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer
    from rlad_megatron.data.prompt_dataset import DatasetError, load_prompt_dataset

    recs = generate_records(2, seed=5, sizes=(2, 3))
    bench = {"quiz": recs[0]["prompt"], "names": recs[0]["names"], "solution": recs[0]["solution"],
             "solution_text_format": recs[0]["answer"], "statements": "(('telling-truth', 1),)"}
    rows = [{**r} for r in recs] + [bench, {"id": "only-text", "quiz": recs[1]["prompt"],
                                            "solution_text_format": recs[1]["answer"]}]
    path = tmp_path / "kk.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_char_tokenizer()
    d = load_prompt_dataset(str(path), KnightsKnavesTask(), tok, max_prompt_tokens=4096, cache_dir=str(tmp_path))
    assert len(d) == 6 and d[4].id == "kk-4" and d[5].record["names"] == recs[1]["names"]
    assert d[5].record["solution"] == recs[1]["solution"] and d[5].record["difficulty"] == "ppl2"
    assert tok.unk_token_id not in d[0].prompt_token_ids
    wrong = {**recs[0], "solution": [not v for v in recs[0]["solution"]]}
    path.write_text(json.dumps(wrong) + "\n")
    with pytest.raises(DatasetError, match=r"row 0.*'solution'.*not the unique solution"):
        load_prompt_dataset(str(path), KnightsKnavesTask(), tok, max_prompt_tokens=4096, cache_dir=str(tmp_path))


def test_kk_data_files_are_deterministic_disjoint_and_split_by_size(tmp_path) -> None:
    from rlad_megatron.tasks.knights_knaves.data import write_kk_data

    a = write_kk_data(str(tmp_path / "a"), train_per_size=6, test_per_size=3, seed=4)
    b = write_kk_data(str(tmp_path / "b"), train_per_size=6, test_per_size=3, seed=4)
    assert open(a["train"]).read() == open(b["train"]).read() and open(a["test"]).read() == open(b["test"]).read()
    train = [json.loads(x) for x in open(a["train"])]
    test = [json.loads(x) for x in open(a["test"])]
    assert sorted({r["difficulty"] for r in test}) == [f"ppl{n}" for n in range(2, 9)] and len(test) == 21
    assert {r["n_people"] for r in train} == {3, 4, 5, 6, 7} and len(train) == 30
    key = lambda r: (tuple(r["names"]), tuple(r["statements"]))  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in test}
