"""Check, then build (issue 27): every mistake knowable before a process group starts or a model loads is one line
on the console naming the input the user typed and the fix, exit code 2, in seconds, with nothing written; runs that
cannot work are refused. One function checks for the launcher and for the job (``run_problems``).

The cases of the issue, each through ``rlad-megatron train`` (or ``eval``) in this process: an empty data folder, a
missing train file, a ``.jsonl`` with a broken line, rows without an ``answer``; a teacher whose tokenizer differs;
a model vLLM's CPU attention cannot serve (head_dim 16) in ``train`` and ``eval``; an ``output_dir`` that cannot be
written; ``loss.alpha=1.5``; the ``data.bad_rows`` suggestion; ``rollout.group_size=1``; ``--resume`` with nothing
to resume. Under torchrun: tests/e2e/test_refusals_under_torchrun.py.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlad_megatron.cli import main
from rlad_megatron.config import LossConfig, load_run_config
from rlad_megatron.tiny.chat_models import LLAMA3_STYLE_TEMPLATE, make_bigram_chat_model
from rlad_megatron.tiny.hf_model import make_tiny_hf_model
from rlad_megatron.trainer.checkpoints.run_dir import RunDirError, prepare_output_dir, record_run_config
from rlad_megatron.trainer.setup.checks import RunCheckError, check_run, run_problems

PACKAGE = Path(__file__).resolve().parents[2] / "rlad_megatron"
PROMPT = '{"prompt": "1+2=", "answer": "3"}\n'


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny models: a student and a teacher that agree, a teacher whose tokenizer and turns differ, and a model
    with head_dim 16 (vLLM's CPU attention has no kernel for it)."""
    root = tmp_path_factory.mktemp("models")
    return {
        "student": make_bigram_chat_model(root / "student", {}, base=True),
        "teacher": make_bigram_chat_model(root / "teacher", {}),
        "other_teacher": make_bigram_chat_model(root / "llama_teacher", {}, template=LLAMA3_STYLE_TEMPLATE),
        "head16": make_tiny_hf_model(root / "head16", family="qwen3", hidden_size=64, intermediate_size=64,
                                     num_heads=4, num_kv_heads=2, head_dim=16),
    }


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text(PROMPT * 4)
    return path


def _train(capsys, *args: str) -> tuple[int, list[str], float]:
    started = time.perf_counter()
    rc = main(["train", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines(), time.perf_counter() - started


def test_bad_data_is_one_line_before_any_model(tmp_path: Path, models: dict[str, Path], capsys) -> None:
    """An empty data folder, a missing train file, a broken .jsonl line, rows without an answer: one line each
    naming data.train_files, the file and (for rows) the line and field, in seconds; nothing written."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jsonl").write_text(PROMPT + '{"prompt": "2+2=", "answer": \n')
    (tmp_path / "no_answer.jsonl").write_text('{"prompt": "1+2="}\n' * 2)
    expected = {
        "empty": f"data.train_files: data folder {tmp_path}/empty is empty: no data files to load",
        "missing.jsonl": f"data.train_files: data file or folder not found: {tmp_path}/missing.jsonl",
        "broken.jsonl": f"data.train_files: {tmp_path}/broken.jsonl line 2 (row 1): invalid JSON",
        "no_answer.jsonl": f"data.train_files: {tmp_path}/no_answer.jsonl: row 0 (0-based; line 1 of a .jsonl), "
                           "field 'answer': missing (this row's columns: prompt; map one to it with "
                           "data.fields.answer=COLUMN)",
    }
    out = tmp_path / "out"
    for name, message in expected.items():
        rc, lines, seconds = _train(capsys, f"model.student={models['student']}", "loss.algorithm=grpo",
                                    f"data.train_files={tmp_path / name}", f"trainer.output_dir={out}")
        assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"rlad-megatron train: {message}"), lines
        assert seconds < 20 and not out.exists()


def test_a_teacher_whose_tokenizer_differs_is_one_line_naming_model_teacher(tmp_path: Path, models, data,
                                                                            capsys) -> None:
    """Was: TokenizerMismatchError with a traceback, after the student had loaded."""
    rc, lines, _ = _train(capsys, f"model.student={models['student']}", f"model.teacher={models['other_teacher']}",
                          f"data.train_files={data}", f"trainer.output_dir={tmp_path / 'out'}")
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"rlad-megatron train: model.teacher={models['other_teacher']} does not fit "
                               f"model.student={models['student']}: ")
    assert "ends an assistant turn with" in lines[0] and "chat template" in lines[0]
    # the same pair with the teacher that shares the student's tokenizer passes every check
    ok = load_run_config(None, [f"model.student={models['student']}", f"model.teacher={models['teacher']}",
                                f"data.train_files={data}", f"trainer.output_dir={tmp_path / 'out'}"])
    assert run_problems(ok) == []


def test_a_model_the_cpu_engine_cannot_serve_is_refused_in_train_and_eval(tmp_path: Path, models, data,
                                                                          capsys) -> None:
    """Was: vLLM's ``RuntimeError: Unsupported CPU attention configuration: head_dim=16 isa=2`` with a traceback,
    after the learner and the engine had loaded (tests/e2e/test_refusals_under_torchrun.py shows the engine's own
    failure)."""
    head16 = models["head16"]
    what = (f"has attention head_dim=16 (its config.json: hidden_size 64, num_attention_heads 4, head_dim 16), "
            "which vLLM's CPU attention cannot serve: it runs head_dim 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, "
            "256 or 512. On this machine use a model with one of those (at hidden_size 64: num_attention_heads 2 "
            "with head_dim 32 or num_attention_heads 1 with head_dim 64), or run on a GPU")
    rc, lines, seconds = _train(capsys, f"model.student={head16}", "loss.algorithm=grpo", f"data.train_files={data}",
                                f"trainer.output_dir={tmp_path / 'out'}")
    assert rc == 2 and lines == [f"rlad-megatron train: model.student={head16} {what}"] and seconds < 20
    # sft: the engine serves the teacher
    rc, lines, _ = _train(capsys, f"model.student={models['student']}", f"model.teacher={head16}",
                          "loss.algorithm=sft", f"data.train_files={data}", f"trainer.output_dir={tmp_path / 'out'}")
    assert rc == 2 and f"rlad-megatron train: model.teacher={head16} {what}" in lines
    started = time.perf_counter()
    rc = main(["eval", "--model", str(head16), "--task", "math", "--data", str(data), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"rlad-megatron eval: --model={head16} {what}\n"
    assert time.perf_counter() - started < 20 and not (tmp_path / "ev").exists()
    assert not (tmp_path / "out").exists()


def test_the_launcher_runs_the_same_checks_for_the_machine_the_job_runs_on(tmp_path: Path, models, data) -> None:
    """``rlad-megatron launch`` (``recipes/job_checks.py``) asks the job's own checks, for a job on CPUs or GPUs."""
    from recipes.job_checks import file_problems

    config = load_run_config(None, [f"model.student={models['head16']}", "loss.algorithm=grpo",
                                    f"data.train_files={data}", f"trainer.output_dir={tmp_path / 'out'}",
                                    "rollout.sleep_level=1"])
    on_cpus = file_problems(config, container=False, cuda=False)
    assert len(on_cpus) == 2 and "rollout.sleep_level=1" in on_cpus[0] and "head_dim=16" in on_cpus[1]
    assert file_problems(config, container=False, cuda=True) == []  # on GPUs vLLM has other attention kernels
    with pytest.raises(RunCheckError) as err:
        check_run(config, cuda=False)
    assert err.value.problems == on_cpus


def test_an_output_dir_that_cannot_be_written_is_refused(tmp_path: Path, models, data, capsys) -> None:
    """Under a regular file (tests/unit/test_run_dir.py), or on a folder this user cannot write."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere but on a read-only filesystem
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(locked)],
                                 capture_output=True, text=True)
        if mounted.returncode:
            pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    else:
        locked.chmod(0o555)
    try:
        rc, lines, _ = _train(capsys, f"model.student={models['student']}", "loss.algorithm=grpo",
                              f"data.train_files={data}", f"trainer.output_dir={locked / 'run'}")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], capture_output=True)
        else:
            locked.chmod(0o755)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"rlad-megatron train: trainer.output_dir={locked / 'run'} cannot be created: "
                               f"{locked} is not writable by this user")
    assert lines[0].endswith("choose another trainer.output_dir")


def test_messages_name_the_dotted_key_typed(tmp_path: Path, models, data, capsys) -> None:
    """``loss.alpha=1.5`` was refused as ``LossConfig.alpha must be ...``; a bad row suggested ``bad_rows='skip'``."""
    rc, lines, _ = _train(capsys, f"model.student={models['student']}", f"data.train_files={data}",
                          "loss.algorithm=grpo", "loss.alpha=1.5")
    assert rc == 2 and lines == ["rlad-megatron train: bad configuration: loss.alpha must be in [0.0, 1.0], got 1.5"]
    with pytest.raises(ValueError, match=r"^loss\.alpha must be in \[0\.0, 1\.0\], got 1\.5$"):
        LossConfig(alpha=1.5).validate()  # a section built on its own reads as the run config's
    with pytest.raises(ValueError, match=r"^loss: unknown key\(s\) \['alhpa'\]"):
        LossConfig.from_dict({"alhpa": 0.5})
    from rlad_megatron.data.prompt_dataset import DatasetError, load_prompt_dataset
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer
    from rlad_megatron.tasks.registry import get_task

    bad = tmp_path / "bad.jsonl"
    bad.write_text(PROMPT + '{"prompt": "2+2="}\n')
    with pytest.raises(DatasetError, match=r"field 'answer'.*\(fix the row, or drop such rows with "
                                           r"data\.bad_rows=skip\)$"):
        load_prompt_dataset(str(bad), get_task("arithmetic"), build_char_tokenizer(), 64)
    with pytest.raises(DatasetError, match=r"drop such rows with --bad-rows=skip\)$"):  # eval's own flag
        load_prompt_dataset(str(bad), get_task("arithmetic"), build_char_tokenizer(), 64, bad_rows_key="--bad-rows")


def _raise_messages(path: Path) -> list[str]:
    """The literal text of every exception raised in ``path`` (f-strings with their placeholders left out)."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            texts += [c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return texts


def test_no_message_names_a_config_class_instead_of_the_key() -> None:
    """``LossConfig.alpha`` / ``VLLMEngineConfig.weight_load='vllm_reload'`` in a message: the user typed
    ``loss.alpha`` / ``rollout.weight_load=vllm_reload`` (or ``eval --engine-option weight_load=...``)."""
    class_key = re.compile(r"\b[A-Z]\w*(Config|Settings)\.[a-z_]+")
    offenders = {f"{path.relative_to(PACKAGE.parent)}: {text!r}" for path in PACKAGE.rglob("*.py")
                 for text in _raise_messages(path) if class_key.search(text)}
    assert not offenders, sorted(offenders)


def test_runs_that_cannot_work_are_refused(tmp_path: Path, models, data, capsys) -> None:
    """``rollout.group_size=1`` with a loss that learns only through group-relative advantages (every advantage is
    0): refused at load. kdrl still learns from its reverse KL to the teacher, so it may sample one response."""
    for algorithm in ("grpo", "rlad"):
        rc, lines, _ = _train(capsys, f"model.student={models['student']}", f"model.teacher={models['teacher']}",
                              f"data.train_files={data}", f"loss.algorithm={algorithm}", "rollout.group_size=1")
        assert rc == 2 and lines == [
            f"rlad-megatron train: bad configuration: rollout.group_size=1 with loss.algorithm={algorithm}: its "
            "advantages are relative to the group of responses to one prompt (reward minus the group's mean), so "
            "with one response per prompt every advantage is 0 and the run learns nothing: set rollout.group_size "
            "to 2 or more (8 in the paper)"]
    base = [f"model.student={models['student']}", f"model.teacher={models['teacher']}", f"data.train_files={data}",
            "rollout.group_size=1"]
    load_run_config(None, base + ["loss.algorithm=kdrl"])
    load_run_config(None, base + ["loss.algorithm=sft"])
    with pytest.raises(ValueError, match="rollout.group_size=1 with loss.algorithm=kdrl"):
        load_run_config(None, base + ["loss.algorithm=kdrl", "loss.kd_beta=0", "loss.kd_beta_final=0"])
    assert not LossConfig(algorithm="grpo", topk_kl="forward", topk_beta=0.1).learns_only_from_group_advantages()


def test_resume_with_nothing_to_resume_is_refused(tmp_path: Path, models, data, capsys) -> None:
    """Was: ``--resume`` in a folder holding no run started from scratch, saying so only in train.log."""
    out = tmp_path / "typo"
    rc, lines, _ = _train(capsys, f"model.student={models['student']}", "loss.algorithm=grpo",
                          f"data.train_files={data}", f"trainer.output_dir={out}", "--resume")
    assert rc == 2 and lines == [
        f"rlad-megatron train: --resume: trainer.output_dir={out} holds no run to resume (no checkpoint under "
        f"{out}/checkpoints): check trainer.output_dir (another folder, a typo?), or start a new run there without "
        "--resume (trainer.resume=auto resumes when a checkpoint exists and starts fresh otherwise)"]
    assert not out.exists()  # the folder the run's lock created is gone again
    config = load_run_config(None, [f"model.student={models['student']}", "loss.algorithm=grpo",
                                    f"data.train_files={data}", f"trainer.output_dir={out}"])
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # a run that crashed before its first checkpoint
    with pytest.raises(RunDirError, match=r"holds a run \(metrics\.jsonl\) but no complete checkpoint to resume "
                                          r"from .*start it over with --overwrite"):
        prepare_output_dir(config, resume=True)
    record_run_config(out, config)  # it says which run it was
    # a requeued Slurm attempt of a job launched with --resume continues as trainer.resume=auto would: from step 0
    assert prepare_output_dir(config, resume=True, requeued=True).resume is False
    # trainer.resume=auto keeps starting fresh where there is nothing
    fresh = load_run_config(None, [f"model.student={models['student']}", "loss.algorithm=grpo",
                                   f"data.train_files={data}", "trainer.resume=auto",
                                   f"trainer.output_dir={tmp_path / 'new'}"])
    assert prepare_output_dir(fresh).resume is False


def test_a_refusal_is_said_by_rank_zero_once(tmp_path: Path, monkeypatch, capsys) -> None:
    """Under torchrun (tests/e2e/test_refusals_under_torchrun.py): rank 0 says it; another rank says nothing unless
    torchrun has not stopped it after the wait (its node saw what rank 0 did not), then the first rank of its node
    does, naming itself; a restarted launch does not say again what its earlier attempt said."""
    from rlad_megatron.launch_local import refused
    from rlad_megatron.refusal import ENV_SAID, refuse

    monkeypatch.setenv("RANK", "0")
    assert refuse(["data.train_files: missing"], command="prog") == 2
    assert capsys.readouterr().err == "prog: data.train_files: missing\n"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert refuse(["data.train_files: missing"], command="prog", wait_s=0) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert refuse(["data.train_files: missing"], command="prog", wait_s=0) == 2
    assert capsys.readouterr().err.startswith("prog (rank 1 on ")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(ENV_SAID, str(tmp_path / "said"))
    for _ in range(2):  # torchrun --max-restarts: the same refusal in every attempt
        refuse(["a.b: bad", "c.d: worse\n  details"], command="prog")
    assert capsys.readouterr().err == "prog: a.b: bad\nprog: c.d: worse\n  details\n"

    class Failure:
        def __init__(self, exitcode: int) -> None:
            self.exitcode = exitcode

    assert refused({0: Failure(2), 1: Failure(2)}) and refused({0: Failure(2), 1: Failure(-15)})
    assert not refused({0: Failure(1), 1: Failure(-15)}) and not refused({0: Failure(2), 1: Failure(1)})


def test_a_data_problem_found_while_building_is_one_line_with_the_traceback_in_the_log(tmp_path: Path, models,
                                                                                       data) -> None:
    """A bad row past the first ones the checks read, or fewer usable prompts than one step takes, is found when the
    prompts are tokenized (after the run's output went to train.log): one line on the console, exit 2, the traceback
    in train.log. The build is replaced by one raising what the loader raises (a subprocess: the redirection of the
    process's output to train.log must not touch pytest's)."""
    code = (
        "import sys\n"
        "import rlad_megatron.trainer.loop as loop\n"
        "from rlad_megatron.data.prompt_dataset import DatasetError\n"
        "def train(config, **kwargs):\n"
        "    raise DatasetError('data.train_files: x.jsonl: row 7 (0-based; line 8 of a .jsonl), field '\n"
        "                       \"'answer': missing (fix the row, or drop such rows with data.bad_rows=skip)\")\n"
        "loop.train = train\n"
        "from rlad_megatron.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", code, "train", f"model.student={models['student']}",
                           "loss.algorithm=grpo", f"data.train_files={data}", f"trainer.output_dir={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("rlad-megatron train: data.train_files: x.jsonl: row 7 (0-based; line 8 of a .jsonl), "
                           "field 'answer': missing (fix the row, or drop such rows with data.bad_rows=skip)\n")
    log = (out / "train.log").read_text()
    assert "Traceback" in log and "DatasetError" in log
