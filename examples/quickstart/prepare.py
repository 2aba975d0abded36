"""The quickstart's preparation: demo data files, a supervised tiny teacher (cached) and a warm-started student.

    files = prepare_data(settings.data, root / "data")
    teacher = prepare_model("teacher", settings.teacher, settings, files, root / "cache")   # cached by settings
    student = prepare_model("student", settings.student, settings, files, root / "cache")

A prepared model is a Hugging Face directory (safetensors + char tokenizer) named ``<kind>-<hash of settings>``
with a ``quickstart.json`` holding its settings, training time and quick accuracy. It is built in a temporary
directory and renamed into place, so an interrupted run never leaves a half-written cache entry behind.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from examples.quickstart.settings import DataSettings, ModelSettings, QuickstartSettings, settings_hash

MARKER = "quickstart.json"


@dataclass
class DataFiles:
    train: Path
    test: Path


@dataclass
class PreparedModel:
    """A prepared HF model directory and what its preparation measured (``info`` is its ``quickstart.json``)."""

    kind: str
    path: Path
    cached: bool
    info: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.info["accuracy"]["accuracy"])


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a jsonl file (first ``limit`` when given)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    return rows


def prepare_data(data: DataSettings, out_dir: Path) -> DataFiles:
    """Write ``train.jsonl`` and ``test.jsonl`` (arithmetic task) into ``out_dir`` unless the same settings did."""
    from rlad_megatron.tasks.arithmetic.data import write_demo_data

    out_dir = Path(out_dir)
    stamp = out_dir / "settings.json"
    wanted = json.dumps(settings_hash(data))
    files = DataFiles(train=out_dir / "train.jsonl", test=out_dir / "test.jsonl")
    if stamp.exists() and stamp.read_text() == wanted and files.train.exists() and files.test.exists():
        return files
    write_demo_data(str(out_dir), n_train=data.n_train, n_test=data.n_test, seed=data.seed,
                    min_digits=data.min_digits, max_digits=data.max_digits)
    stamp.write_text(wanted)
    return files


def model_cache_dir(kind: str, model: ModelSettings, settings: QuickstartSettings, cache_root: Path) -> Path:
    """``cache_root/<kind>-<hash>``: the hash covers the model's settings, the data and the response budget."""
    key = settings_hash(kind, model, settings.data, settings.max_new_tokens, settings.prep_eval_prompts)
    return Path(cache_root) / f"{kind}-{key}"


def prepare_model(kind: str, model: ModelSettings, settings: QuickstartSettings, files: DataFiles,
                  cache_root: Path, log: Callable[[str], None] = print) -> PreparedModel:
    """Build a tiny model, train it on the reference chains of thought, measure its greedy accuracy; cached.

    A cache hit (``cache_root/<kind>-<hash>/quickstart.json`` exists) returns at once with ``cached=True``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_megatron.tasks.arithmetic.task import ArithmeticTask
    from rlad_megatron.tiny.sft import generate_accuracy, train_sft
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    final = model_cache_dir(kind, model, settings, cache_root)
    if (final / MARKER).exists():
        info = json.loads((final / MARKER).read_text())
        log(f"[quickstart] {kind}: cached {final} (accuracy {info['accuracy']['accuracy']:.3f})")
        return PreparedModel(kind, final, True, info)

    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.torch_threads)
    try:
        make_tiny_hf_model(tmp, family=model.family, seed=model.init_seed, **model.shape())
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        net = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        params = sum(p.numel() for p in net.parameters())
        task = ArithmeticTask()
        train = read_records(files.train)
        test = read_records(files.test, settings.prep_eval_prompts)
        log(f"[quickstart] {kind}: {params / 1e6:.2f}M parameters, {model.sft_steps} supervised steps "
            f"(batch {model.sft_batch_size}, lr {model.sft_lr:g})")
        stats = train_sft(net, tokenizer, task, train, steps=model.sft_steps, batch_size=model.sft_batch_size,
                          lr=model.sft_lr, seed=model.sft_seed, log=log, log_every=max(1, model.sft_steps // 5))
        report = generate_accuracy(net, tokenizer, task, test, max_new_tokens=settings.max_new_tokens)
        net.save_pretrained(tmp, safe_serialization=True)
        info = {"kind": kind, "settings": model.__dict__, "data": settings.data.__dict__, "parameters": params,
                "sft": stats.__dict__, "accuracy": report.as_dict(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if final.exists():  # another run finished the same entry first: keep it
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[quickstart] {kind}: greedy accuracy {report.accuracy:.3f} {report.by_difficulty} "
        f"(train {stats.seconds:.0f}s, loss {stats.first_loss:.3f} -> {stats.last_loss:.3f}; eval "
        f"{report.seconds:.0f}s) -> {final}")
    return PreparedModel(kind, final, False, info)
