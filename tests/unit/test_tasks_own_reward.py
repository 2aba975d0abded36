"""Your own reward or task (issue 28): ``data.task`` naming a reward function or a Task subclass, by module or by
file (relative to the config file), checked at config time without running the code, wrapped into a task, and
guarded like the built-in rewards (worker process, timeout, non-finite values, exceptions)."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlad_megatron.config import ConfigError, load_run_config
from rlad_megatron.rewards.base import RewardResult
from rlad_megatron.rewards.guard import RewardGuard
from rlad_megatron.tasks.function_task import FunctionTask
from rlad_megatron.tasks.registry import check_task_reference, get_task, get_training_task

REWARDS = textwrap.dedent('''
    import math
    import time

    from rlad_megatron.tasks.arithmetic.task import ArithmeticTask

    def exact(completion, answer, record):
        return float(completion.strip() == answer)

    def partial(completion, answer, record, *, bonus=0.25):
        if completion.strip() == answer:
            return 1.0
        return bonus if completion.strip().isdigit() else 0.0

    def verdict(completion, answer, record):
        return completion.strip() == record["alias"]

    def slow(completion, answer, record):
        time.sleep(30)
        return 1.0

    def not_a_number(completion, answer, record):
        return math.nan

    def raises(completion, answer, record):
        raise RuntimeError("my reward broke")

    def inline(completion, answer, record):
        return 1.0
    inline.may_hang = False

    class Doubled(ArithmeticTask):
        name = "doubled"

        def __init__(self, factor=2.0):
            super().__init__(correct_score=factor)

    NOT_CALLABLE = 3
''')


@pytest.fixture(scope="module")
def rewards_file(tmp_path_factory) -> Path:
    """One file for the module: once imported, a module name belongs to that file (a second file of the same
    name is refused: see test_references_are_checked_without_running_them)."""
    path = tmp_path_factory.mktemp("own") / "rl_rewards_for_test.py"
    path.write_text(REWARDS)
    return path


def test_references_are_checked_without_running_them(tmp_path, rewards_file) -> None:
    (tmp_path / "boom.py").write_text("raise SystemExit('never run at config time')\ndef f(c, a, r):\n    return 1\n")
    assert check_task_reference("math") is None
    assert check_task_reference(f"{rewards_file}:exact") is None
    assert check_task_reference(f"{tmp_path / 'boom.py'}:f") is None  # parsed, not imported
    assert check_task_reference("rlad_megatron.tasks.math.task:MathTask") is None
    problems = {
        f"{rewards_file}:missing": f"defines no top-level 'missing'",
        f"{tmp_path}/nope.py:f": f"no such file {tmp_path}/nope.py",
        "no_such_pkg.rewards:f": "module 'no_such_pkg.rewards' is not importable here",
        f"{tmp_path}/json.py:f": "a module named 'json' is already imported from",
        "rlad_megatron.tasks.math.task:nothing": "defines no top-level 'nothing'",
        "mathh": "is not a registered task; choose one of arithmetic",
        f"{rewards_file}:1bad": "is not a Python name",
    }
    (tmp_path / "json.py").write_text("def f(c, a, r):\n    return 1\n")
    get_task(f"{rewards_file}:exact")  # imported now: the same name from another folder is refused
    (tmp_path / rewards_file.name).write_text(REWARDS)
    problems[f"{tmp_path / rewards_file.name}:exact"] = "a module named 'rl_rewards_for_test' is already imported"
    for value, message in problems.items():
        problem = check_task_reference(value)
        assert problem is not None and problem.startswith(f"data.task={value!r}") and message in problem, problem


def test_a_bad_reference_is_one_clear_error_at_config_time_or_job_start(tmp_path, capsys) -> None:
    """The config checks the reference's form (its code may exist only where the job runs); train checks that it
    resolves before any model loads, with the data."""
    config = tmp_path / "run.yaml"
    config.write_text("model: {student: s}\nloss: {algorithm: grpo}\n"
                      "data: {task: ./my_reward.py:score, train_files: [t.jsonl]}\n")
    loaded = load_run_config(config)
    assert loaded.data.task == f"{tmp_path}/my_reward.py:score"  # from the config file's folder
    assert check_task_reference(loaded.data.task) == (f"data.task='{tmp_path}/my_reward.py:score': no such file "
                                                      f"{tmp_path}/my_reward.py")
    with pytest.raises(ConfigError, match=r"data\.task='.*/my_reward\.py:1st': '1st' after the last ':' is not a "):
        load_run_config(config, ["data.task=my_reward.py:1st"])
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    model = make_tiny_hf_model(tmp_path / "s", hidden_size=32, intermediate_size=64, num_heads=1, num_kv_heads=1)
    (tmp_path / "t.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    from rlad_megatron.cli import main

    capsys.readouterr()  # the model writer's progress bar

    assert main(["train", "--config", str(config), f"model.student={model}", f"trainer.output_dir={tmp_path}/o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"rlad-megatron train: data.task='{tmp_path}/my_reward.py:score': no such file "
                   f"{tmp_path}/my_reward.py"]


def test_reward_function_becomes_a_task(rewards_file) -> None:
    task = get_task(f"{rewards_file}:partial", instruction="Answer with a number.", bonus=0.5)
    assert isinstance(task, FunctionTask) and task.name == "partial" and task.reward_may_hang
    record = task.to_record({"id": "r", "prompt": "1+1=", "answer": 2, "alias": "two"})
    assert record["answer"] == "2" and record["alias"] == "two"
    assert task.user_message(record) == "1+1=\nAnswer with a number."
    assert task.reward("2", record) == RewardResult(1.0, correct=True, format_ok=True)
    assert task.reward("3", record) == RewardResult(0.5, correct=False, format_ok=True)  # below correct_at=1
    assert get_task(f"{rewards_file}:verdict").reward("two", record).correct  # reads another column
    assert get_task(f"{rewards_file}:partial", correct_at=0.25).reward("3", record).correct
    with pytest.raises(ValueError, match=r"data\.task_options=\{'bonsu': 1\} do not fit task .*partial"):
        get_training_task(f"{rewards_file}:partial", {"bonsu": 1})


def test_task_subclass_by_reference(rewards_file) -> None:
    task = get_training_task(f"{rewards_file}:Doubled", {"factor": 3.0})
    assert task.name == "doubled" and task.reward("#### 2", {"answer": "2"}).score == 3.0
    with pytest.raises(ValueError, match="a int object is neither a Task subclass nor a reward function"):
        get_task(f"{rewards_file}:NOT_CALLABLE")


def test_a_module_on_the_pythonpath(rewards_file, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(rewards_file.parent))
    assert check_task_reference("rl_rewards_for_test:exact") is None
    assert get_task("rl_rewards_for_test:exact").reward("7", {"answer": "7"}).correct


def test_user_rewards_are_guarded_in_a_worker_process(rewards_file) -> None:
    """Guarded like the built-in rewards: a worker process (the file's folder reaches it through sys.path), the
    timeout, non-finite values and exceptions count as errors with reward 0; the run goes on."""
    record = {"id": "r", "prompt": "1+1=", "answer": "2"}
    tasks = {name: get_task(f"{rewards_file}:{name}") for name in ("exact", "slow", "not_a_number", "raises")}
    guard = RewardGuard(tasks["exact"].reward, timeout_s=3.0)
    try:
        assert guard.backend == "process"
        assert guard.score("2", record) == RewardResult(1.0, correct=True, format_ok=True)
    finally:
        guard.close()
    for name, error in (("slow", "timeout after 3 s"), ("not_a_number", "non-finite reward nan"),
                        ("raises", "RuntimeError: my reward broke")):
        with RewardGuard(tasks[name].reward, timeout_s=3.0) as guard:
            result = guard.score("2", record)
            assert result.score == 0.0 and not result.correct and error in result.error, result
    assert RewardGuard(get_task(f"{rewards_file}:inline").reward).backend == "inline"
    assert math.isnan(tasks["not_a_number"].reward("2", record).score)  # the guard, not the task, refuses it


def test_a_file_reference_resolves_in_a_fresh_process(rewards_file) -> None:
    """What every torchrun rank does: resolve the reference from the config alone (no sys.path set up before),
    the file next to the config, the process started elsewhere."""
    config = rewards_file.parent / "run.yaml"
    config.write_text(f"model: {{student: s}}\nloss: {{algorithm: grpo}}\n"
                      f"data: {{task: {rewards_file.name}:exact, train_files: [t.jsonl]}}\n")
    code = ("from rlad_megatron.config import load_run_config; from rlad_megatron.tasks.registry import "
            f"get_training_task; c = load_run_config({str(config)!r}); "
            "print(get_training_task(c.data.task, c.data.task_options).reward('5', {'answer': '5'}).score)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1.0"
