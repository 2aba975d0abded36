"""A tiny but real training run for end-to-end tests and benchmarks: HF student/teacher checkpoints built locally,
arithmetic prompts, a YAML config, and the trainer launched under torchrun exactly as a user would."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from rlad_megatron.trainer.observability import metrics_file

# vLLM's CPU attention needs head_dim 32/64/...: both models use head_dim 64; kv heads 2 allow TP=2.
STUDENT = dict(family="llama", num_layers=2, hidden_size=128, intermediate_size=256, num_heads=2, num_kv_heads=2)
TEACHER = dict(family="llama", num_layers=4, hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2)


def prepare_models_and_data(root: Path, *, num_prompts: int = 64, max_digits: int = 1, seed: int = 0) -> dict:
    """Write ``root/{student,teacher}`` (random HF checkpoints) and ``root/train.jsonl``; return their paths."""
    from rlad_megatron.tasks.arithmetic.task import generate_records
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    root = Path(root)
    paths = {"student": root / "student", "teacher": root / "teacher", "train": root / "train.jsonl"}
    if not (paths["student"] / "config.json").exists():
        make_tiny_hf_model(paths["student"], seed=seed + 1, **STUDENT)
    if not (paths["teacher"] / "config.json").exists():
        make_tiny_hf_model(paths["teacher"], seed=seed + 2, **TEACHER)
    if not paths["train"].exists():
        with open(paths["train"], "w") as f:
            for record in generate_records(num_prompts, seed=seed, min_digits=1, max_digits=max_digits):
                f.write(json.dumps(record) + "\n")
    return {k: str(v) for k, v in paths.items()}


def run_config(paths: dict, output_dir: Path, **sections: dict[str, Any]) -> dict:
    """A small run config over ``paths``; ``sections`` update it (e.g. ``loss={"algorithm": "grpo"}``)."""
    config = {
        "model": {"student": paths["student"], "teacher": paths["teacher"]},
        "data": {"task": "arithmetic", "train_files": [paths["train"]], "prompts_per_step": 4,
                 "max_prompt_tokens": 32},
        "rollout": {"group_size": 4, "max_new_tokens": 24, "kv_cache_mb": 64},
        "optim": {"lr": 1e-3},
        "trainer": {"steps": 2, "micro_batch_size": 8, "output_dir": str(output_dir), "seed": 7},
        "loss": {"algorithm": "rlad"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def launch(config: dict, nproc: int, *, workdir: Path, resume: bool = False, timeout: float = 600,
           extra_env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """Run ``rlad-megatron train --config <yaml>`` on ``nproc`` local ranks under torchrun, every socket on the
    loopback interface (``python -m rlad_megatron.launch_local --nproc-per-node N -m rlad_megatron.cli ...``)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return launch_config_file(config_path, nproc, workdir=workdir, resume=resume, timeout=timeout,
                              extra_env=extra_env, wait=wait)


def launch_config_file(config_path: Path, nproc: int, *, workdir: Path, overrides: tuple[str, ...] = (),
                       cwd: Path | None = None, resume: bool = False, timeout: float = 600,
                       extra_env: dict[str, str] | None = None,
                       wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """:func:`launch` of a config file as it is (its relative paths taken from its folder), with ``overrides``,
    started in ``cwd``; the console goes to ``workdir/train.log`` (``resume.log``)."""
    from rlad_megatron.launch_local import command

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    args = ["train", "--config", str(config_path), *overrides] + (["--resume"] if resume else [])
    cmd = command(nproc, "rlad_megatron.cli", args)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // nproc)))
    env.update(extra_env or {})
    log = open(workdir / ("resume.log" if resume else "train.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=None if cwd is None else str(cwd))
    if not wait:
        return proc
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        log.close()
    output = (workdir / ("resume.log" if resume else "train.log")).read_text(errors="replace")
    return subprocess.CompletedProcess(cmd, proc.returncode, output, "")


def read_metrics(output_dir: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (:func:`rlad_megatron.trainer.observability.metrics_file.read_metrics`)."""
    return metrics_file.read_metrics(Path(output_dir) / metrics_file.METRICS_FILE)


def warm_start(hf_dir: str, out_dir: str, train_file: str, *, steps: int, lr: float = 3e-3, batch_size: int = 32,
               seed: int = 0) -> str:
    """A copy of ``hf_dir`` after ``steps`` of supervised training on the reference chains of thought of
    ``train_file``'s records (so that RL starts from a policy that sometimes earns reward)."""
    import torch

    if (Path(out_dir) / "config.json").exists():
        return out_dir
    torch.manual_seed(seed)
    # One thread: the tiny model's GEMMs gain nothing from two, and two OpenMP threads on a loaded 2-core machine spin
    # at every barrier (measured: 150 steps in 6.6 s with one thread, 111 s with two, at load average 2-3).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _warm_start(hf_dir, out_dir, train_file, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _warm_start(hf_dir: str, out_dir: str, train_file: str, *, steps: int, lr: float, batch_size: int,
                seed: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.registry import get_task
    from rlad_megatron.tiny.sft import train_sft

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    records = [json.loads(line) for line in Path(train_file).read_text().splitlines() if line.strip()]
    train_sft(model, tokenizer, get_task("arithmetic"), records, steps=steps, batch_size=batch_size, lr=lr,
              seed=seed, warmup=5)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def prepare_warm_models(root: Path) -> dict:
    """Models for runs that must learn: a teacher SFT-trained to ~100% on 1-digit additions (same shape as the
    student, 150 steps, a few CPU-seconds) and a student warm-started for 60 steps (~25% at temperature 1).
    The teacher is not larger here only to keep the test suite's CPU budget."""
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    root = Path(root)
    paths = prepare_models_and_data(root)
    trained_teacher = root / "teacher_sft"
    if not (trained_teacher / "config.json").exists():
        make_tiny_hf_model(root / "teacher_small", seed=5, **STUDENT)
        warm_start(str(root / "teacher_small"), str(trained_teacher), paths["train"], steps=150, lr=3e-3, seed=1)
    paths["teacher"] = str(trained_teacher)
    paths["student"] = warm_start(paths["student"], str(root / "student_warm"), paths["train"], steps=60)
    return paths
