"""The comparison's bookkeeping: run planning, trainer configs, steps to threshold, per-step metric comparison,
the summary table."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from examples.compare.plan import RunSpec, comparison_run_config, plan_runs
from examples.compare.prepare import Prepared
from examples.compare.report import (RunResult, alpha_one_check, common_start, compare_metrics,
                                          format_table, steps_to_threshold, summarize)
from examples.compare.settings import arithmetic_settings
from rlad_megatron.config import run_config_from_dict, run_config_to_dict
from examples.quickstart.prepare import DataFiles


def test_plan_runs_main_then_sweep_without_duplicates() -> None:
    runs = plan_runs("arithmetic", seeds=[0, 1], sweep_alphas=[0.1, 0.5, 1.0], sweep_seeds=[0])
    names = [r.name for r in runs]
    assert names[:8] == ["sft-s0", "sft-s1", "grpo-s0", "grpo-s1", "kdrl-s0", "kdrl-s1", "rlad-a0.5-s0",
                         "rlad-a0.5-s1"]
    assert names[8:] == ["rlad-a0.1-s0", "rlad-a1-s0"]  # rlad a=0.5 seed 0 is already in the main comparison
    assert len(set(names)) == len(names)
    with pytest.raises(ValueError, match="unknown algorithm"):
        plan_runs("arithmetic", seeds=[0], algorithms=["ppo"])
    with pytest.raises(ValueError, match="outside"):
        plan_runs("arithmetic", seeds=[0], sweep_alphas=[1.5], sweep_seeds=[0])


def test_run_config_differs_only_in_algorithm_alpha_and_seed(tmp_path: Path) -> None:
    s = arithmetic_settings()
    prepared = Prepared(DataFiles(tmp_path / "train.jsonl", tmp_path / "test.jsonl"), tmp_path / "t", tmp_path / "s",
                        {})
    a = run_config_to_dict(comparison_run_config(RunSpec("arithmetic", "grpo", 1.0, 0), s, prepared, tmp_path / "a"))
    b = run_config_to_dict(comparison_run_config(RunSpec("arithmetic", "rlad", 0.3, 2), s, prepared, tmp_path / "a"))
    assert a["loss"]["algorithm"] == "grpo" and b["loss"]["algorithm"] == "rlad" and b["loss"]["alpha"] == 0.3
    assert {k for k in a["loss"] if a["loss"][k] != b["loss"][k]} == {"algorithm", "alpha"}
    assert a["trainer"]["seed"] == 0 and b["trainer"]["seed"] == 2
    for section in ("model", "rollout", "data", "optim", "parallel"):
        assert a[section] == b[section]
    config = run_config_from_dict(b)  # the trainer's own parser reads the plan's JSON back
    assert config.parallel.tensor_parallel == 1 and config.loss.alpha == 0.3
    assert config.trainer.updates_per_batch == s.rl.updates_per_batch
    assert config.rollout.max_new_tokens == s.rl.max_new_tokens and config.optim.min_lr == s.rl.lr / 10


def test_steps_to_threshold_uses_a_trailing_mean() -> None:
    assert steps_to_threshold([0.1, 0.9, 0.1, 0.5, 0.6, 0.7], 0.5, window=3) == 4  # mean(0.9, 0.1, 0.5) = 0.5
    assert steps_to_threshold([0.1, 0.9, 0.1, 0.5, 0.6, 0.7], 0.55, window=3) == 6
    assert steps_to_threshold([0.6, 0.6, 0.6], 0.5, window=3) == 3
    assert steps_to_threshold([0.9, 0.9], 0.5, window=3) is None  # no full window yet
    assert steps_to_threshold([0.9] * 4 + [0.5], 0.8) == 5 and steps_to_threshold([0.9] * 4, 0.5) is None
    assert steps_to_threshold([0.1, 0.2], 0.5) is None


def _result(label: str, algorithm: str, alpha: float, seed: int, final: float, accs: list[float]) -> RunResult:
    metrics = [{"step": i + 1, "reward/accuracy": a, "loss/pg_loss": a / 10, "time/step": 1.0 + seed}
               for i, a in enumerate(accs)]
    return RunResult(f"{label}-{seed}", label, algorithm, alpha, seed, final, {"accuracy": final}, metrics)


def test_compare_metrics_ignores_wall_clock_but_sees_any_other_difference() -> None:
    a = _result("grpo", "grpo", 1.0, 0, 0.5, [0.1, 0.2]).metrics
    b = _result("grpo", "grpo", 1.0, 1, 0.5, [0.1, 0.2]).metrics  # only time/step differs
    assert compare_metrics(a, b)["identical"]
    c = _result("grpo", "grpo", 1.0, 0, 0.5, [0.1, 0.2 + 1e-12]).metrics
    out = compare_metrics(a, c)
    assert not out["identical"] and out["worst_key"] in ("reward/accuracy", "loss/pg_loss")
    assert not compare_metrics([], [])["identical"]


def test_summarize_table_and_alpha_one_check() -> None:
    results = [
        _result("grpo", "grpo", 1.0, 0, 0.4, [0.2, 0.3, 0.3, 0.3, 0.4]),
        _result("grpo", "grpo", 1.0, 1, 0.6, [0.2] * 5),
        _result("sft", "sft", 1.0, 0, 0.3, [0.9] * 5),  # teacher's rollouts: not the student's curve
        _result("rlad a=1", "rlad", 1.0, 0, 0.4, [0.2, 0.3, 0.3, 0.3, 0.4]),
    ]
    assert common_start(results) == pytest.approx(0.2)
    rows = {r["label"]: r for r in summarize(results, 0.3)}
    # the 5-step trailing mean of seed 0 reaches 0.3 at step 5; seed 1 never does
    assert rows["grpo"]["final_mean"] == pytest.approx(0.5) and rows["grpo"]["final_std"] == pytest.approx(0.1414, abs=1e-3)
    assert rows["grpo"]["reached"] == "1/2" and rows["grpo"]["steps_to_threshold"] == 5
    assert rows["sft"]["reached"] == "n/a" and rows["sft"]["train_last5"] is None
    assert [r["label"] for r in summarize(results, 0.3)] == ["sft", "grpo", "rlad a=1"]
    table = format_table(summarize(results, 0.3), 0.3, {"teacher": 0.9})
    assert "| teacher | - | 0.900 | - | nan | nan |" in table and "| grpo | 2 | 0.500 ± 0.141 |" in table
    table = format_table(summarize(results, 0.3), 0.3, {"teacher": {"accuracy": 0.9, "mean_reward": 2.5,
                                                                    "format_rate": 1.0}})
    assert "| teacher | - | 0.900 | - | 2.500 | 1.000 |" in table
    (check,) = alpha_one_check(results)
    assert check["seed"] == 0 and check["identical"]
    assert math.isnan(common_start([results[2]]))


def test_compact_kk_budget_fits_every_prompt_and_reference_completion(tmp_path: Path) -> None:
    """The comparison's token budgets must hold the longest prompt and the longest reference completion (+ eos) of
    its own data, and the models' positions must hold both; otherwise the teacher could never be right."""
    from examples.compare.prepare import prepare_kk_data
    from examples.compare.settings import task_settings
    from rlad_megatron.tasks.registry import get_task
    from examples.quickstart.prepare import read_records

    s = task_settings("knights_knaves_compact")
    files = prepare_kk_data(s, tmp_path)
    task = get_task(s.task)
    rows = read_records(files.train) + read_records(files.test)
    assert len(rows) == s.data.n_train + s.data.n_test
    longest_prompt = max(len(task.plain_prompt(r)) for r in rows) + 1  # + <bos> (one token per character)
    longest_completion = max(len(task.reference_completion(r)) for r in rows) + 1  # + <eos>
    assert longest_prompt <= s.rl.max_prompt_tokens
    assert longest_completion <= s.rl.max_new_tokens
    assert s.rl.max_prompt_tokens + s.rl.max_new_tokens <= s.max_position_embeddings
    assert {r["difficulty"] for r in rows} == {"ppl2", "ppl3", "ppl4"}


def test_paired_differences_and_difficulty_table() -> None:
    from examples.compare.report import difficulty_table, format_paired, paired_differences

    results = [_result("grpo", "grpo", 1.0, s, acc, [0.1]) for s, acc in ((0, 0.40), (1, 0.50), (2, 0.30))]
    results += [_result("rlad a=0.5", "rlad", 0.5, s, acc, [0.1]) for s, acc in ((0, 0.45), (1, 0.48), (2, 0.40))]
    results.append(_result("kdrl", "kdrl", 1.0, 7, 0.9, [0.1]))  # no grpo partner for seed 7: left out
    rows = paired_differences(results)
    assert [r["label"] for r in rows] == ["rlad a=0.5"]
    (row,) = rows
    assert row["diffs"] == pytest.approx({0: 0.05, 1: -0.02, 2: 0.10})
    assert row["mean"] == pytest.approx(0.13 / 3) and row["wins"] == 2
    assert row["std"] == pytest.approx(statistics.stdev([0.05, -0.02, 0.10]))
    assert "+0.043 ± " in format_paired(rows) and "2/3" in format_paired(rows)

    for r, levels in zip(results[:2], ({"ppl2": 0.5, "ppl3": 0.25}, {"ppl2": 0.7, "ppl3": 0.35})):
        r.eval["by_difficulty"] = levels
    table = difficulty_table(results[:2], {"teacher": {"accuracy": 1.0, "by_difficulty": {"ppl2": 1.0, "ppl3": 0.9}}})
    assert table.splitlines()[0] == "| run | ppl2 | ppl3 |"
    assert "| teacher | 1.000 | 0.900 |" in table and "| grpo | 0.600 | 0.300 |" in table


def test_activity_table_averages_over_steps_and_seeds() -> None:
    from examples.compare.report import activity_table

    a = _result("rlad a=0.5", "rlad", 0.5, 0, 0.4, [0.1, 0.2])
    b = _result("rlad a=0.5", "rlad", 0.5, 1, 0.4, [0.1, 0.2])
    for run, clamp in ((a, (0.1, 0.2)), (b, (0.3, 0.4))):
        for m, c in zip(run.metrics, clamp):
            m.update({"loss/teacher/clamp_frac": c, "loss/ratio/min": 0.5, "loss/ratio/max": 1.5,
                      "loss/clip/low_frac": 0.01})
    g = _result("grpo", "grpo", 1.0, 0, 0.4, [0.1])
    table = activity_table([g, a, b, _result("sft", "sft", 1.0, 0, 0.4, [0.9])])
    lines = table.splitlines()
    assert len(lines) == 4  # header, rule, grpo, rlad (sft trains on the teacher's samples: no loss diagnostics)
    assert lines[2].startswith("| grpo | - | - |")
    assert lines[3].startswith("| rlad a=0.5 | 0.50..1.50 | 1.00% | - | 25.0% |")


def test_command_line_values_keep_their_types() -> None:
    from examples.compare.__main__ import parse_value

    assert parse_value("2e-4") == pytest.approx(2e-4)  # YAML 1.1 would leave this a string
    assert parse_value("0.1") == 0.1 and parse_value("32") == 32 and parse_value("true") is True
    assert parse_value("token-mean") == "token-mean"


def _async(r: RunResult, staleness: list[float] | None = None) -> RunResult:
    """``r`` as the asynchronous run of its algorithm and seed (label and name as the plan writes them)."""
    r.rollout_mode, r.label, r.name = "async", f"{r.label} (async)", f"{r.label}-async-{r.seed}"
    for m, st in zip(r.metrics, staleness or []):
        m.update({"rollout/staleness": st, "rollout/stale_dropped": 0.0})
    return r


def test_plan_runs_rollout_modes_keep_sync_names_and_pair_each_seed() -> None:
    sync_only = plan_runs("arithmetic", seeds=[0, 1], algorithms=["grpo", "rlad"], sweep_alphas=[1.0],
                          sweep_seeds=[0])
    assert sync_only == plan_runs("arithmetic", seeds=[0, 1], algorithms=["grpo", "rlad"], sweep_alphas=[1.0],
                                  sweep_seeds=[0], rollout_modes=["sync"])  # the default: unchanged
    runs = plan_runs("arithmetic", seeds=[0, 1], algorithms=["grpo", "rlad"], rollout_modes=["sync", "async"])
    assert [r.name for r in runs] == ["grpo-s0", "grpo-async-s0", "grpo-s1", "grpo-async-s1", "rlad-a0.5-s0",
                                      "rlad-a0.5-async-s0", "rlad-a0.5-s1", "rlad-a0.5-async-s1"]
    assert [r.label for r in runs[:2]] == ["grpo", "grpo (async)"] and runs[5].label == "rlad a=0.5 (async)"
    assert [r.name for r in runs if r.rollout_mode == "sync"] == [r.name for r in plan_runs(
        "arithmetic", seeds=[0, 1], algorithms=["grpo", "rlad"])]
    with pytest.raises(ValueError, match="unknown rollout mode"):
        plan_runs("arithmetic", seeds=[0], rollout_modes=["offpolicy"])


def test_async_run_config_differs_from_sync_only_in_the_rollout_layout(tmp_path: Path) -> None:
    s = arithmetic_settings()
    prepared = Prepared(DataFiles(tmp_path / "train.jsonl", tmp_path / "test.jsonl"), tmp_path / "t", tmp_path / "s",
                        {})
    sync = run_config_to_dict(comparison_run_config(RunSpec("arithmetic", "rlad", 0.5, 1), s, prepared, tmp_path))
    asyn = run_config_to_dict(comparison_run_config(RunSpec("arithmetic", "rlad", 0.5, 1, "async"), s, prepared,
                                                    tmp_path))
    assert sync["rollout"]["mode"] == "sync" and sync["rollout"]["placement"] == "colocated"
    assert sync["rollout"]["engine_cpus"] == 0
    changed = {k: (sync["rollout"][k], asyn["rollout"][k]) for k in sync["rollout"]
               if sync["rollout"][k] != asyn["rollout"][k]}
    assert changed == {"mode": ("sync", "async"), "placement": ("colocated", "disaggregated"),
                       "engine_cpus": (0, 1)}
    assert asyn["rollout"]["max_staleness"] == 1
    for section in ("model", "data", "optim", "parallel", "loss", "trainer"):
        assert sync[section] == asyn[section]
    from recipes.small import small_run_config

    with pytest.raises(ValueError, match="rollout mode 'later'"):
        small_run_config(s.rl, task="arithmetic", student="s", teacher="t", train_files=["x"], output_dir="o",
                         seed=0, rollout_mode="later")


def test_mode_comparison_pairs_async_with_sync_and_checks_one_std() -> None:
    from examples.compare.report import (format_mode_comparison, format_staleness, mode_comparison,
                                         paired_differences, staleness_rows)

    grpo = [_result("grpo", "grpo", 1.0, s, acc, [0.1, 0.2]) for s, acc in ((0, 0.40), (1, 0.44), (2, 0.42))]
    grpo_a = [_async(_result("grpo", "grpo", 1.0, s, acc, [0.1, 0.2]), [0, 1])
              for s, acc in ((0, 0.41), (1, 0.46), (2, 0.42))]
    rlad = [_result("rlad a=0.5", "rlad", 0.5, s, acc, [0.1, 0.2]) for s, acc in ((0, 0.50), (1, 0.50), (2, 0.51))]
    rlad_a = [_async(_result("rlad a=0.5", "rlad", 0.5, s, acc, [0.1, 0.2, 0.3]), [0, 1, 1])
              for s, acc in ((0, 0.45), (1, 0.47))]
    rows = {r["label"]: r for r in mode_comparison(grpo + grpo_a + rlad + rlad_a)}
    g, r = rows["grpo"], rows["rlad a=0.5"]
    assert g["diffs"] == pytest.approx({0: 0.01, 1: 0.02, 2: 0.0}) and g["ahead"] == 2
    assert g["sync_mean"] == pytest.approx(0.42) and g["sync_std"] == pytest.approx(0.02)
    assert g["gap"] == pytest.approx(0.01) and g["within_one_std"] is True  # |0.01| <= 0.02
    assert r["seeds"] == 2 and r["diffs"] == pytest.approx({0: -0.05, 1: -0.03})
    assert r["gap"] == pytest.approx(0.46 - 0.5033, abs=1e-4) and r["within_one_std"] is False  # sync std 0.0058
    table = format_mode_comparison(mode_comparison(grpo + grpo_a + rlad + rlad_a))
    assert "| grpo | 0.420 ± 0.020 (3) | 0.430 ± 0.026 (3) | +0.010 |" in table and "**yes**" in table
    assert "| rlad a=0.5 |" in table and "**no** (async lower)" in table and "0/2" in table
    assert table.splitlines()[2].endswith("| 2.00 / 2.00 |")  # time/step medians: 1 + seed over seeds 0..2
    assert mode_comparison(grpo + rlad) == []  # nothing asynchronous: no rows
    assert mode_comparison(grpo[:1] + grpo_a[:1])[0]["within_one_std"] is None  # one sync seed: no std

    # paired vs grpo stays within a mode: rlad (async) against grpo (async), never against grpo (sync)
    paired = {p["label"]: p for p in paired_differences(grpo + grpo_a + rlad + rlad_a)}
    assert set(paired) == {"rlad a=0.5", "rlad a=0.5 (async)"}
    assert paired["rlad a=0.5 (async)"]["diffs"] == pytest.approx({0: 0.04, 1: 0.01})

    rows = summarize(grpo_a + rlad_a + grpo + rlad, 0.3)  # a sync row before its async twin, whatever the input order
    assert [r["label"] for r in rows] == ["grpo", "grpo (async)", "rlad a=0.5", "rlad a=0.5 (async)"]

    stale = staleness_rows(grpo + grpo_a + rlad_a)
    assert [x["name"] for x in stale] == ["grpo-async-0", "grpo-async-1", "grpo-async-2", "rlad a=0.5-async-0",
                                          "rlad a=0.5-async-1"]  # sync runs have none
    assert stale[-1]["staleness_mean"] == pytest.approx(2 / 3) and stale[-1]["stale_steps"] == 2
    assert stale[-1]["stale_dropped"] == 0 and stale[-1]["steps"] == 3
    assert "| rlad a=0.5-async-1 | 3 | 0.667 | 2/3 | 0 | - |" in format_staleness(stale)


def test_alpha_one_check_pairs_within_a_rollout_mode() -> None:
    g, r = _result("grpo", "grpo", 1.0, 0, 0.4, [0.2, 0.3]), _result("rlad a=1", "rlad", 1.0, 0, 0.4, [0.2, 0.3])
    ga, ra = (_async(_result("grpo", "grpo", 1.0, 0, 0.4, [0.2, 0.5])),
              _async(_result("rlad a=1", "rlad", 1.0, 0, 0.4, [0.2, 0.5])))
    checks = alpha_one_check([g, ga, r, ra])
    assert len(checks) == 2 and all(c["identical"] for c in checks)
    assert [c.get("rollout_mode", "sync") for c in checks] == ["async", "sync"]
    assert not alpha_one_check([g, ra])  # an async rlad run is never checked against a sync grpo run


def test_rollout_modes_option() -> None:
    from examples.compare.__main__ import build_parser

    assert build_parser().parse_args([]).rollout_modes == ["sync"]
    assert build_parser().parse_args(["--rollout-modes", "sync,async"]).rollout_modes == ["sync", "async"]
    for bad in ("sync,sync", "fast", ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--rollout-modes", bad])


def test_learning_curves_draw_async_runs_dashed_next_to_sync(tmp_path: Path) -> None:
    from examples.compare.report import plot_learning_curves

    runs = [_result("grpo", "grpo", 1.0, s, 0.4, [0.1, 0.2, 0.3]) for s in (0, 1)]
    runs += [_async(_result("grpo", "grpo", 1.0, s, 0.42, [0.1, 0.25, 0.3])) for s in (0, 1)]
    png = plot_learning_curves(runs, tmp_path / "curves.png", "sync vs async", reference={"student (initial)": 0.35})
    assert png.stat().st_size > 10_000
