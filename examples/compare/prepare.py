"""The comparison's shared starting point per task: data files, a supervised teacher and a warm-started student.

Arithmetic reuses the quickstart's preparation (:mod:`examples.quickstart.prepare`, same cache layout).
Knights and Knaves needs its own (the quickstart's is arithmetic-only and its models have 512 positions, while a
K&K prompt is ~800 characters): the same steps with the quickstart's ``train_sft`` / ``generate_accuracy``.

Every run of a task starts from these two directories, so all algorithms share the student initialisation and
the teacher.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from examples.compare.settings import TaskSettings
from examples.quickstart.prepare import DataFiles, read_records
from examples.quickstart.settings import QuickstartEval
from examples.quickstart.settings import ModelSettings, QuickstartSettings, settings_hash

MARKER = "compare_model.json"


@dataclass
class Prepared:
    """What every run of one task starts from."""

    files: DataFiles
    teacher: Path
    student: Path
    info: dict[str, Any]
    """``{"teacher": ..., "student": ...}``: each model's preparation record (settings, SFT loss, quick accuracy)."""


def quickstart_view(s: TaskSettings) -> QuickstartSettings:
    """The task's settings as the quickstart's, so that its preparation functions (and cache keys) apply."""
    return QuickstartSettings(data=s.data, teacher=s.teacher, student=s.student,
                              eval=QuickstartEval(k=s.eval.k, temperature=s.eval.temperature, top_p=s.eval.top_p),
                              torch_threads=1, prep_eval_prompts=min(200, s.eval.limit))


def prepare_task(s: TaskSettings, root: Path, log: Callable[[str], None] = print) -> Prepared:
    """Data, teacher and student for ``s.task`` under ``root`` (cached across calls by the settings' hash)."""
    root = Path(root)
    if s.task == "arithmetic":
        from examples.quickstart.prepare import prepare_data, prepare_model

        qs = quickstart_view(s)
        files = prepare_data(s.data, root / "data")
        teacher = prepare_model("teacher", s.teacher, qs, files, root / "cache", log)
        student = prepare_model("student", s.student, qs, files, root / "cache", log)
        return Prepared(files, teacher.path, student.path, {"teacher": teacher.info, "student": student.info})
    if s.task in ("knights_knaves", "knights_knaves_compact"):
        files = prepare_kk_data(s, root / "data")
        teacher = prepare_kk_model("teacher", s.teacher, s, files, root / "cache", log)
        student = prepare_kk_model("student", s.student, s, files, root / "cache", log)
        return Prepared(files, teacher, student, {k: json.loads((p / MARKER).read_text())
                                                  for k, p in (("teacher", teacher), ("student", student))})
    if s.task == "carry_trap":
        files = prepare_carry_trap_data(s, root / "data")
        teacher = prepare_kk_model("teacher", s.teacher, s, files, root / "cache", log, reference=s.teacher_reference)
        student = prepare_kk_model("student", s.student, s, files, root / "cache", log)
        info = {k: json.loads((p / MARKER).read_text()) for k, p in (("teacher", teacher), ("student", student))}
        rl_train = rl_training_file(s, files, teacher, root / "data", log)
        if s.trust_k:
            info["teacher_trust"] = json.loads((rl_train.parent / "trust_report" / "teacher_trust.json").read_text())
        return Prepared(DataFiles(train=rl_train, test=files.test), teacher, student, info)
    raise ValueError(f"no preparation for task {s.task!r}")


def prepare_kk_data(s: TaskSettings, out_dir: Path) -> DataFiles:
    """K&K ``train.jsonl`` / ``test.jsonl`` with ``s.kk_sizes`` inhabitants (disjoint; per size n / len(sizes)),
    English or compact (``s.task``)."""
    from rlad_megatron.tasks.knights_knaves.compact import make_compact_record
    from rlad_megatron.tasks.knights_knaves.data import write_kk_data
    from rlad_megatron.tasks.knights_knaves.task import make_record

    out_dir = Path(out_dir)
    sizes = tuple(s.kk_sizes)
    wanted = json.dumps(settings_hash(s.task, s.data, list(sizes)))
    stamp = out_dir / "settings.json"
    files = DataFiles(train=out_dir / "train.jsonl", test=out_dir / "test.jsonl")
    if stamp.exists() and stamp.read_text() == wanted and files.train.exists() and files.test.exists():
        return files
    write_kk_data(str(out_dir), train_per_size=s.data.n_train // len(sizes), test_per_size=s.data.n_test // len(sizes),
                  seed=s.data.seed, train_sizes=sizes, test_sizes=sizes,
                  make=make_compact_record if s.task == "knights_knaves_compact" else make_record)
    stamp.write_text(wanted)
    return files


def prepare_carry_trap_data(s: TaskSettings, out_dir: Path) -> DataFiles:
    """carry_trap ``train.jsonl`` / ``test.jsonl`` (:func:`rlad_megatron.tasks.carry_trap.data.write_carry_trap_data`)."""
    from rlad_megatron.tasks.carry_trap.data import write_carry_trap_data

    out_dir = Path(out_dir)
    wanted = json.dumps(settings_hash(s.task, s.data))
    stamp = out_dir / "settings.json"
    files = DataFiles(train=out_dir / "train.jsonl", test=out_dir / "test.jsonl")
    if stamp.exists() and stamp.read_text() == wanted and files.train.exists() and files.test.exists():
        return files
    write_carry_trap_data(str(out_dir), n_train=s.data.n_train, n_test=s.data.n_test, seed=s.data.seed,
                          min_digits=s.data.min_digits, max_digits=s.data.max_digits)
    stamp.write_text(wanted)
    return files


def rl_training_file(s: TaskSettings, files: DataFiles, teacher: Path, out_dir: Path,
                     log: Callable[[str], None] = print) -> Path:
    """The RL runs' training file: the first ``s.rl_prompts`` train prompts (all when None), and with
    ``s.trust_k > 0`` each row's ``teacher_pass_rate`` from ``rlad-megatron teacher-trust`` (``s.trust_k`` samples of
    the teacher per prompt at temperature 1, scored by the task's verifier, as training scores). Every arm trains on
    this same file (paired: same prompts, same order per seed); only gated arms read the field. Cached."""
    import subprocess
    import sys

    out_dir = Path(out_dir)
    wanted = json.dumps(settings_hash(s.rl_prompts, s.trust_k, Path(teacher).name, s.rl.max_new_tokens,
                                      s.rl.max_prompt_tokens, s.data))
    stamp = out_dir / "rl_settings.json"
    subset = out_dir / "rl_train.jsonl"
    final = out_dir / ("rl_train_trust.jsonl" if s.trust_k else "rl_train.jsonl")
    if stamp.exists() and stamp.read_text() == wanted and final.exists():
        return final
    rows = files.train.read_text().splitlines()
    subset.write_text("\n".join(rows[: s.rl_prompts] if s.rl_prompts else rows) + "\n")
    if s.trust_k:
        log(f"[compare] teacher pre-pass: {s.trust_k} samples x {min(len(rows), s.rl_prompts or len(rows))} "
            "prompts (rlad-megatron teacher-trust)")
        cmd = [sys.executable, "-m", "rlad_megatron.cli", "teacher-trust", "--teacher", str(teacher), "--task", s.task,
               "--data", str(subset), "--k", str(s.trust_k), "--out", str(final),
               "--report-dir", str(out_dir / "trust_report"), "--max-prompt-tokens", str(s.rl.max_prompt_tokens),
               "--max-tokens", str(s.rl.max_new_tokens), "--engine-option", f"kv_cache_bytes={64 << 20}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        with open(out_dir / "trust.log", "w", encoding="utf-8") as fh:
            code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise RuntimeError(f"teacher-trust exited with {code}; see {out_dir / 'trust.log'}")
        log("[compare] " + (out_dir / "trust.log").read_text().strip().splitlines()[-2])
    stamp.write_text(wanted)
    return final


def prepare_kk_model(kind: str, model: ModelSettings, s: TaskSettings, files: DataFiles, cache_root: Path,
                     log: Callable[[str], None] = print, reference: str | None = None) -> Path:
    """A tiny model trained on the task's reference answers (K&K, carry_trap; ``reference``: carry_trap's
    ``"flawed"`` or ``"correct"`` targets), cached in ``cache_root/kk-<kind>-<hash>``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.tiny.sft import generate_accuracy, train_sft
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    key = settings_hash(kind, model, s.data, list(s.kk_sizes), s.max_position_embeddings, s.rl.max_new_tokens,
                        *([s.task] if s.task != "knights_knaves" else []),  # English K&K keeps its old cache key
                        *([reference] if reference else []))
    final = Path(cache_root) / f"kk-{kind}-{key}"
    if (final / MARKER).exists():
        log(f"[compare] {kind}: cached {final}")
        return final
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see run.launch_worker: more threads are far slower on a shared 2-core machine
    try:
        make_tiny_hf_model(tmp, family=model.family, seed=model.init_seed,
                           max_position_embeddings=s.max_position_embeddings, **model.shape())
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        net = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        task = get_task(s.task, **({"reference": reference} if reference else {}))
        log(f"[compare] {kind}: {s.task} supervised warm start, {model.sft_steps} steps")
        stats = train_sft(net, tokenizer, task, read_records(files.train), steps=model.sft_steps,
                          batch_size=model.sft_batch_size, lr=model.sft_lr, seed=model.sft_seed, log=log,
                          log_every=max(1, model.sft_steps // 4))
        report = generate_accuracy(net, tokenizer, task, read_records(files.test, s.eval.limit),
                                   max_new_tokens=s.rl.max_new_tokens)
        net.save_pretrained(tmp, safe_serialization=True)
        info = {"kind": kind, "settings": model.__dict__, "sft": stats.__dict__, "accuracy": report.as_dict(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if not final.exists():
            os.replace(tmp, final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[compare] {kind}: greedy accuracy {report.accuracy:.3f} {report.by_difficulty} "
        f"(loss {stats.first_loss:.3f} -> {stats.last_loss:.3f}, {stats.seconds:.0f}s) -> {final}")
    return final
