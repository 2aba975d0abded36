"""The comparison's teacher-signal arms (issue 33): arm names and variants, their trainer configs, the carry_trap
report by subset and digits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.compare.plan import RunSpec, comparison_run_config, plan_runs
from examples.compare.prepare import Prepared
from examples.compare.report import RunResult, cell_table, paired_differences, prompt_cells, read_per_prompt, summarize
from examples.compare.run import subset_and_digits
from examples.compare.settings import ARM_VARIANTS, carry_trap_settings, split_arm, variant_loss
from examples.quickstart.prepare import DataFiles
from rlad_megatron.config import run_config_to_dict


def test_arms_split_into_algorithm_and_variant() -> None:
    assert split_arm("grpo") == ("grpo", "") and split_arm("rlad+gate") == ("rlad", "gate")
    assert split_arm("kdrl+gate") == ("kdrl", "gate") and split_arm("rlad+topk") == ("rlad", "topk")
    assert split_arm("rlad+topk+gate") == ("rlad", "topk+gate")
    for bad in ("ppo", "rlad+nope", "ppo+gate", "rlad+gate+gate", "rlad+topk+nope"):
        with pytest.raises(ValueError, match="unknown algorithm/arm"):
            split_arm(bad)


def test_plan_runs_names_and_labels_of_variants() -> None:
    runs = plan_runs("carry_trap", seeds=[0, 1], algorithms=["rlad", "rlad+topk", "rlad+gate", "kdrl+gate"])
    assert [r.name for r in runs] == ["rlad-a0.5-s0", "rlad-a0.5-s1", "rlad+topk-a0.5-s0", "rlad+topk-a0.5-s1",
                                      "rlad+gate-a0.5-s0", "rlad+gate-a0.5-s1", "kdrl+gate-s0", "kdrl+gate-s1"]
    assert [r.label for r in runs[::2]] == ["rlad a=0.5", "rlad a=0.5 +topk", "rlad a=0.5 +gate", "kdrl +gate"]


@pytest.mark.parametrize("variant", sorted(ARM_VARIANTS) + ["topk+gate"])
def test_variant_config_differs_from_its_algorithm_only_in_the_variant_keys(tmp_path: Path, variant: str) -> None:
    s = carry_trap_settings()
    prepared = Prepared(DataFiles(tmp_path / "train.jsonl", tmp_path / "test.jsonl"), tmp_path / "t", tmp_path / "s",
                        {})
    base = run_config_to_dict(comparison_run_config(RunSpec("carry_trap", "rlad", 0.5, 1), s, prepared, tmp_path))
    arm = run_config_to_dict(comparison_run_config(RunSpec("carry_trap", "rlad", 0.5, 1, variant=variant), s,
                                                   prepared, tmp_path))
    extra = variant_loss(variant)
    assert {k for k in base["loss"] if base["loss"][k] != arm["loss"][k]} == {
        k for k, v in extra.items() if base["loss"][k] != v}
    assert {k: arm["loss"][k] for k in extra} == extra and len(extra) >= len(ARM_VARIANTS["gate"])
    for section in ("model", "rollout", "data", "optim", "parallel", "trainer"):
        assert base[section] == arm[section]  # paired: same data, seed and budget


def _run(label: str, algorithm: str, seed: int, final: float, per_prompt: list[dict], variant: str = "") -> RunResult:
    return RunResult(f"{label}-{seed}", label, algorithm, 0.5, seed, final, {"accuracy": final}, [],
                     variant=variant, per_prompt=per_prompt)


def test_cell_table_pools_prompts_per_subset_and_digits(tmp_path: Path) -> None:
    test = tmp_path / "test.jsonl"
    records = [{"id": "t0", "prompt": "5+7=", "difficulty": "carry"}, {"id": "t1", "prompt": "12+3=", "difficulty": "plain"},
               {"id": "t2", "prompt": "40+3=", "difficulty": "plain"}, {"id": "t3", "prompt": "1+2=", "difficulty": "plain"}]
    test.write_text("".join(json.dumps(r) + "\n" for r in records))
    cells = prompt_cells(test, subset_and_digits)
    assert cells == {"t0": "carry d1", "t1": "plain d2", "t2": "plain d2", "t3": "plain d1"}

    def rows(*correct: int) -> list[dict]:
        return [{"id": f"t{i}", "n": 4, "correct": c} for i, c in enumerate(correct)]

    results = [_run("rlad a=0.5", "rlad", 0, 0.5, rows(0, 4, 2, 4)), _run("rlad a=0.5", "rlad", 1, 0.5, rows(2, 4, 4, 0)),
               _run("rlad a=0.5 +gate", "rlad", 0, 0.6, rows(4, 4, 4, 4), "gate")]
    table = cell_table(results, cells, {"teacher": rows(0, 4, 4, 4)}).splitlines()
    assert table[0] == "| run | carry d1 (1) | plain d1 (1) | plain d2 (2) |"
    assert table[2] == "| teacher | 0.000 | 1.000 | 1.000 |"
    # seed 0: carry 0/4, plain d1 4/4, plain d2 6/8; seed 1: 2/4, 0/4, 8/8 -> means 0.25, 0.5, 0.875
    assert table[3] == "| rlad a=0.5 | 0.250 | 0.500 | 0.875 |"
    assert table[4] == "| rlad a=0.5 +gate | 1.000 | 1.000 | 1.000 |"

    rlad_rows = paired_differences(results, baseline="rlad a=0.5")
    assert [r["label"] for r in rlad_rows] == ["rlad a=0.5 +gate"] and rlad_rows[0]["diffs"] == pytest.approx({0: 0.1})
    assert [row["label"] for row in summarize(results, 0.5)] == ["rlad a=0.5", "rlad a=0.5 +gate"]


def test_read_per_prompt_finds_the_benchmark_rows(tmp_path: Path) -> None:
    assert read_per_prompt(tmp_path) == []
    rows = [{"id": "a", "difficulty": "carry", "n": 4, "correct": 1}]
    (tmp_path / "eval.json").write_text(json.dumps({"benchmarks": {"carry_trap": {"per_prompt": rows}}}))
    assert read_per_prompt(tmp_path) == rows


def test_carry_trap_short_preparation(tmp_path: Path) -> None:
    """The short carry_trap preparation without the teacher pre-pass (vLLM; covered by the teacher-trust tests):
    data with both subsets, a flawed teacher and a correct student cached by settings, the RL file = the first
    ``rl_prompts`` train rows, shared by every arm."""
    from examples.compare.prepare import prepare_task
    from examples.compare.settings import short_settings

    s = short_settings("carry_trap")
    s.trust_k = 0
    prepared = prepare_task(s, tmp_path, log=lambda _: None)
    train = (tmp_path / "data" / "train.jsonl").read_text().splitlines()
    assert prepared.files.train.read_text().splitlines() == train[: s.rl_prompts]
    test = [json.loads(line) for line in prepared.files.test.read_text().splitlines()]
    assert len(test) == s.data.n_test and {r["difficulty"] for r in test} == {"carry", "plain"}
    assert prepared.info["teacher"]["settings"]["sft_steps"] == s.teacher.sft_steps
    assert prepared.teacher != prepared.student and (prepared.teacher / "config.json").exists()
    again = prepare_task(s, tmp_path, log=lambda _: None)  # cached: same folders, nothing retrained
    assert (again.teacher, again.student, again.files) == (prepared.teacher, prepared.student, prepared.files)


def test_activity_table_reads_either_clamp_key_and_the_trust_and_topk_terms() -> None:
    from examples.compare.report import activity_table

    old = RunResult("rlad-0", "rlad a=0.5", "rlad", 0.5, 0, 0.3, {}, [{"loss/teacher/clamp_frac": 0.1}])
    new = RunResult("gate-0", "rlad a=0.5 +gate", "rlad", 0.5, 0, 0.3, {},
                    [{"teacher/clamp_frac": 0.3, "loss/trust/gated_frac": 0.4},
                     {"teacher/clamp_frac": 0.1, "loss/trust/gated_frac": 0.2, "loss/topk/kl": 0.5},
                     {"teacher/clamp_frac": None}], variant="gate")
    lines = activity_table([new, old]).splitlines()
    assert "top-k KL/token" in lines[0] and "responses gated (trust)" in lines[0]
    assert lines[2].startswith("| rlad a=0.5 | - | - | - | 10.0% |")  # the plain arm first
    assert lines[3].startswith("| rlad a=0.5 +gate | - | - | - | 20.0% | - | 0.500 | 30.0% |")


def test_plot_by_difficulty_writes_a_png(tmp_path: Path) -> None:
    from examples.compare.report import plot_by_difficulty

    runs = [RunResult(f"r{s}", label, "rlad", 0.5, s, 0.3, {"accuracy": 0.3, "by_difficulty": {"carry": 0.1 * s,
                                                                                             "plain": 0.5}}, [],
                      variant=variant) for s in (0, 1) for label, variant in (("rlad a=0.5", ""),
                                                                              ("rlad a=0.5 +gate", "gate"))]
    png = plot_by_difficulty(runs, tmp_path / "d.png", "t", {"teacher": {"by_difficulty": {"carry": 0.0, "plain": 1.0}}})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
