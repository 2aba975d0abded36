"""The quickstart's RLAD run: write the trainer's YAML config, launch ``torchrun ... rlad_megatron.cli train``.

    config = write_run_config(settings, teacher_dir, student_dir, files, run_dir)
    run_training(config, nproc=2)        # streams the trainer's output; raises TrainingFailed on a non-zero exit

The run is a subprocess (two gloo ranks, TP=2: the Megatron learner on both, the colocated vLLM CPU engine on the
first), exactly what a user would type; it writes ``run_dir/metrics.jsonl``, ``tb/``, ``curves.png``,
``checkpoints/`` and the final student in ``hf/``.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from pathlib import Path
from typing import Sequence, TextIO

from rlad_megatron.console import console_stream
from examples.quickstart.prepare import DataFiles
from examples.quickstart.settings import QuickstartSettings
from recipes.small import small_run_config
from rlad_megatron.config import RunConfig, run_config_to_dict

#: Environment of the training ranks on CPU: one OpenMP thread per rank (two ranks share two cores), no hub.
TRAIN_ENV: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
}


class TrainingFailed(RuntimeError):
    pass


def quickstart_run_config(settings: QuickstartSettings, teacher_dir: Path, student_dir: Path, files: DataFiles,
                          run_dir: Path) -> RunConfig:
    """The trainer's (validated) run config for the quickstart, through the small-run recipe."""
    rl = dataclasses.replace(settings.rl, max_new_tokens=settings.max_new_tokens)
    return small_run_config(rl, task="arithmetic", student=str(student_dir), teacher=str(teacher_dir),
                            train_files=[str(files.train)], output_dir=str(run_dir), seed=settings.data.seed + 1234)


def write_run_config(settings: QuickstartSettings, teacher_dir: Path, student_dir: Path, files: DataFiles,
                     run_dir: Path) -> Path:
    """The quickstart's run config (a bad value fails here, naming the key, before any process starts), written
    as ``run_dir/config.yaml`` for ``rlad-megatron train --config``."""
    import json

    import yaml

    config = quickstart_run_config(settings, teacher_dir, student_dir, files, run_dir)
    data = json.loads(json.dumps(run_config_to_dict(config)))  # plain YAML types (tuples become lists)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def training_command(config_path: Path, nproc: int, overrides: Sequence[str] = (), resume: bool = False,
                     overwrite: bool = False) -> list[str]:
    """``python -m rlad_megatron.launch_local --nproc-per-node N -m rlad_megatron.cli train --config FILE ...``
    (torchrun, every socket on the loopback interface)."""
    from rlad_megatron.launch_local import command

    cmd = command(nproc, "rlad_megatron.cli", ["train", "--config", str(config_path)])
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd + list(overrides)


def child_output_tail(text: str, lines: int = 30) -> list[str]:
    """The last ``lines`` lines the ranks printed, without torchrun's own failure report (its traceback, summary
    and ``E1128 ...`` log lines), which otherwise fills the tail and hides the ranks' error."""
    rows = text.replace("\r", "\n").splitlines()
    for i in range(len(rows) - 1, -1, -1):
        if rows[i].startswith("Traceback") and any(launcher in r for r in rows[i: i + 6]
                                                   for launcher in ("torch/distributed/run.py", "launch_local.py")):
            rows = rows[:i]
            break
    rows = [r for r in rows if not re.match(r"^[EWI]\d{4} ", r) and r.strip()]
    return rows[-lines:]


def run_training(config_path: Path, nproc: int, *, overrides: Sequence[str] = (), resume: bool = False,
                 overwrite: bool = False, log_file: Path | None = None, stream: TextIO | None = None,
                 timeout_s: float | None = None) -> None:
    """Run the training subprocess, copying its output (stdout and stderr merged) to ``stream`` as it comes and to
    ``log_file``; raise :class:`TrainingFailed` with the log's tail when it exits non-zero or times out."""
    stream = stream if stream is not None else console_stream()
    cmd = training_command(config_path, nproc, overrides, resume, overwrite)
    env = {**os.environ, **TRAIN_ENV}
    log = open(log_file, "w", encoding="utf-8") if log_file is not None else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    try:
        assert proc.stdout is not None
        buffer = b""
        while True:
            chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096)
            if not chunk:
                break
            text = chunk.decode("utf-8", errors="replace")
            stream.write(text)  # progress-bar carriage returns pass through unchanged
            stream.flush()
            if log is not None:
                log.write(text)
            buffer = (buffer + chunk)[-65536:]
        code = proc.wait(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if log is not None:
            log.close()
    if code != 0:
        tail = child_output_tail(buffer.decode("utf-8", errors="replace"))
        where = f" (full log: {log_file})" if log_file is not None else ""
        raise TrainingFailed(f"training exited with code {code}{where}; command: {' '.join(cmd)}\n"
                             + "\n".join(tail))
