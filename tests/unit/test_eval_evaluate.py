"""evaluate() over a fake rollout engine: Mean@k / Pass@k per difficulty for the demo task, K&K and math through
the same dataset API; reward failures counted; JSON + markdown output; demo data files."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pytest

from rlad_megatron.tasks.arithmetic import task as arithmetic
from rlad_megatron.tasks.knights_knaves import task as knights_knaves
from rlad_megatron.data.char_tokenizer import build_char_tokenizer
from rlad_megatron.tasks.arithmetic.data import write_demo_data
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.tasks.base import Task
from rlad_megatron.tasks.registry import get_task
from rlad_megatron.eval.evaluate import evaluate
from rlad_megatron.eval.metrics import pass_at_k
from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.engine_api import Completion, PromptResult, RolloutEngine, SamplingSettings


class FakeEngine:
    """Answers prompt j's sample i correctly iff i < n_correct[prompt]; everything else gets ``wrong_text``."""

    def __init__(self, tok: Any, by_prompt: dict[tuple[int, ...], tuple[str, str, int]]) -> None:
        self.tok, self.by_prompt, self.calls = tok, by_prompt, []

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings) -> list[PromptResult]:
        self.calls.append(sampling)
        out = []
        for p in prompts:
            good, bad, n_correct = self.by_prompt[tuple(p)]
            comps = []
            for i in range(sampling.n):
                ids = self.tok(good if i < n_correct else bad, add_special_tokens=False)["input_ids"]
                ids = ids[: sampling.max_tokens]
                reason = "length" if len(ids) == sampling.max_tokens else "stop"
                comps.append(Completion(ids + ([self.tok.eos_token_id] if reason == "stop" else []),
                                        [0.0] * (len(ids) + (reason == "stop")), reason))
            out.append(PromptResult(list(p), comps))
        return out

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
        return [[0.0] * (len(s) - n) for s, n in zip(sequences, prompt_lens)]

    @property
    def weight_version(self) -> int:
        return 0

    shards = 1
    config = None
    kv_cache_tokens = 0
    runs_apart = False
    last_generate_s = 0.0

    def request_generate(self, prompts, sampling) -> None:
        self._held = (self.generate(prompts, sampling), 0)

    def collect_generate(self):
        return self._held

    def sleep(self, level: int) -> None:
        pass

    def wake_up(self, part: str) -> None:
        pass

    def shutdown(self) -> None:
        pass


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _expected(dataset, n_correct, k, difficulty_of):
    groups: dict[str, list[int]] = {}
    for ex, c in zip(dataset.examples, n_correct):
        groups.setdefault(difficulty_of(ex.record), []).append(c)
    return {d: (sum(c / k for c in cs) / len(cs), sum(pass_at_k(k, c, 1) for c in cs) / len(cs),
                sum(pass_at_k(k, c, k) for c in cs) / len(cs)) for d, cs in groups.items()}


@pytest.mark.parametrize("task_name", ["arithmetic", "knights_knaves", "math"])
def test_same_dataset_api_and_evaluation_for_every_task(tok, tmp_path, task_name) -> None:
    k = 4
    if task_name == "arithmetic":
        rows = arithmetic.generate_records(9, seed=0, max_digits=3)
    elif task_name == "knights_knaves":
        rows = knights_knaves.generate_records(3, seed=0, sizes=(2, 3, 4))
    else:
        rows = [{"problem": f"What is {i}+{i}?", "answer": str(2 * i), "level": f"Level {1 + i % 2}"}
                for i in range(6)]
    task = get_task(task_name)
    ds = load_prompt_dataset(_jsonl(tmp_path / "d.jsonl", rows), task, tok, max_prompt_tokens=2048,
                             cache_dir=str(tmp_path / "hf"))
    n_correct = [i % (k + 1) for i in range(len(ds))]
    table = {}
    for ex, c in zip(ds.examples, n_correct):
        r = ex.record
        if task_name == "arithmetic":
            good, bad = task.reference_completion(r), "#### 0000000"
        elif task_name == "knights_knaves":
            good = task.reference_completion(r)
            bad = good.replace("knight", "KNAVE").replace("knave", "knight").replace("KNAVE", "knave")
        else:
            good, bad = f"so \\boxed{{{r['answer']}}}", "so \\boxed{-1}"
        table[tuple(ex.prompt_token_ids)] = (good, bad, c)
    engine = FakeEngine(tok, table)
    assert isinstance(engine, RolloutEngine)
    report = evaluate(engine, task, ds.examples, tok, k=k, batch_size=4)
    assert engine.calls[0].temperature == 0.6 and engine.calls[0].top_p == 0.95 and engine.calls[0].n == k
    assert engine.calls[0].stop_token_ids == (tok.eos_token_id,)
    want = _expected(ds, n_correct, k, task.difficulty)
    assert set(report.by_difficulty) == set(want)
    for d, (mean, p1, pk) in want.items():
        row = report.by_difficulty[d]
        assert (row.mean_at_k, row.pass_at[1], row.pass_at[k]) == pytest.approx((mean, p1, pk))
    assert report.overall.prompts == len(ds) and report.overall.samples == len(ds) * k
    assert report.overall.mean_at_k == pytest.approx(sum(c / k for c in n_correct) / len(ds))
    assert report.reward_stats["reward/errors"] == 0


class FlakyTask(Task):
    name = "flaky"

    def user_message(self, record: Mapping[str, Any]) -> str:
        return record["prompt"]

    def reward(self, completion: str, record: Mapping[str, Any]) -> RewardResult:
        if "boom" in completion:
            raise RuntimeError("verifier crashed")
        return RewardResult(1.0, True, True)


def test_reward_failures_are_counted_and_reports_written(tok, tmp_path) -> None:
    task = FlakyTask()
    recs = [{"id": f"r{i}", "prompt": f"{i}+{i}=", "answer": "x", "difficulty": f"d{10 - i}"} for i in range(3)]
    table = {tuple(task.encode_prompt(task.build_prompt(r, tok), tok)): ("fine", "boom", 1) for r in recs}
    report = evaluate(FakeEngine(tok, table), task, recs, tok, k=3,
                      sampling=SamplingSettings(n=2, temperature=0.6, top_p=0.95, max_tokens=4))
    assert report.samples_per_prompt == 3  # n raised to k
    assert report.reward_stats["reward/errors"] == 6 and report.overall.mean_at_k == pytest.approx(1 / 3)
    assert report.overall.truncated_rate == pytest.approx(1.0)  # max_tokens=4 cut every response
    jpath, mpath = report.write(str(tmp_path / "out"))
    data = json.loads(open(jpath).read())
    assert data["overall"]["pass_at"]["3"] == pytest.approx(1.0) and data["task"] == "flaky"
    md = open(mpath).read()
    assert md.index("| d8 |") < md.index("| d9 |") < md.index("| d10 |") < md.index("| all |")
    assert "Mean@3" in md and "Pass@1" in md and "reward errors: 6" in md
    with pytest.raises(ValueError, match="pass_ks"):
        evaluate(FakeEngine(tok, table), task, recs, tok, k=3, pass_ks=[5])

    # Several benchmarks: one summary table (a row each), their own tables, one results file.
    from rlad_megatron.eval.report import SuiteReport

    other = evaluate(FakeEngine(tok, {key: ("fine", "fine", 3) for key in table}), task, recs[:2], tok, k=3)
    suite = SuiteReport(reports={"bench_a": report, "bench_b": other}, data={"model_dir": "m"})
    jpath, mpath = suite.write(str(tmp_path / "suite"))
    data = json.loads(open(jpath).read())
    assert set(data["benchmarks"]) == {"bench_a", "bench_b"} and data["model_dir"] == "m"
    assert data["benchmarks"]["bench_b"]["overall"]["mean_at_k"] == 1.0
    summary = suite.summary_markdown()
    assert "| benchmark | task | prompts | Mean@n | Pass@1 | Pass@3 |" in summary
    assert "| bench_a | flaky | 3 | 0.3333 | 0.3333 | 1.0000 |" in summary
    assert "| bench_b | flaky | 2 | 1.0000 | 1.0000 | 1.0000 |" in summary
    md = open(mpath).read()
    assert md.index("## Benchmarks") < md.index("## bench_a") < md.index("## bench_b")


def test_demo_data_files_are_deterministic_and_disjoint(tmp_path, tok) -> None:
    a = write_demo_data(str(tmp_path / "a"), n_train=300, n_test=60, seed=3, max_digits=3)
    b = write_demo_data(str(tmp_path / "b"), n_train=300, n_test=60, seed=3, max_digits=3)
    for name in ("train", "test", "sft"):
        assert open(a[name]).read() == open(b[name]).read()
    train = [json.loads(x) for x in open(a["train"])]
    test = [json.loads(x) for x in open(a["test"])]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len({r["prompt"] for r in test}) == 60
    sft = [json.loads(x) for x in open(a["sft"])]
    assert all(arithmetic.ArithmeticTask().reward(r["completion"], r).correct for r in sft)
    ds = load_prompt_dataset(a["test"], get_task("arithmetic"), tok, max_prompt_tokens=32, cache_dir=str(tmp_path))
    assert len(ds) == 60 and ds.report.skipped == {}


def test_cut_off_answers_are_not_credited_when_asked(tok) -> None:
    task = FlakyTask()  # credits every completion that does not say "boom"
    recs = [{"id": "r0", "prompt": "1+1=", "answer": "x", "difficulty": "d"}]
    table = {tuple(task.encode_prompt(task.build_prompt(r, tok), tok)): ("fine", "long answer", 1) for r in recs}
    sampling = SamplingSettings(n=2, temperature=0.6, top_p=0.95, max_tokens=6)
    credited = evaluate(FakeEngine(tok, table), task, recs, tok, k=2, sampling=sampling)
    assert credited.overall.mean_at_k == 1.0 and credited.overall.truncated_rate == 0.5
    strict = evaluate(FakeEngine(tok, table), task, recs, tok, k=2, sampling=sampling, credit_truncated=False)
    assert strict.overall.mean_at_k == 0.5 and strict.overall.mean_reward == 0.5  # "long a" was cut off
