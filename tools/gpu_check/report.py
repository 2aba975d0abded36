"""Render tools/gpu_check/run.sh's results (``OUT`` folder) as the Markdown section that goes into docs/gpu.md.
Partial results render too: a part that failed or never ran shows as such, with whatever numbers it wrote."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _fmt(value, spec: str = "", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def bench_line(name: str, report: dict | None) -> str:
    """One Markdown bullet for a ``bench/gpu_rlad.py`` JSON report (None: it wrote nothing)."""
    if report is None:
        return f"- {name}: no result (see its log)"
    parts = ", ".join(f"{k} {v}" for k, v in report.get("parts", {}).items()) or "no part finished"
    r = report.get
    width = (r("tokens_per_step") or 0) // max(1, r("sequences_per_step") or 1)
    line = (f"- {name}: {r('device')}, {r('dtype')}, student {r('student_params_m')}M parameters, "
            f"{r('sequences_per_step')} sequences x {width} tokens per step; parts: {parts}")
    if "learner_train_tokens_per_s" in report:
        line += (f"\n  - learner step {_fmt(r('learner_train_tokens_per_s'), '.0f')} tokens/s "
                 f"({r('train_s_median')} s, {_fmt(r('learner_tflops_per_s'))} TFLOP/s, MFU "
                 f"{_fmt(r('learner_mfu'), '.1%')}); teacher scoring {_fmt(r('teacher_score_tokens_per_s'), '.0f')} "
                 f"tokens/s (MFU {_fmt(r('teacher_mfu'), '.1%')}); peak GPU memory {_fmt(r('peak_gpu_gib'))} GiB"
                 f" (peak bf16 {_fmt(r('peak_bf16_tflops'))} TFLOP/s)")
    if "megatron_vs_hf_train_ratio" in report:
        line += (f"\n  - transformers, {r('hf_baseline_times')}: {r('hf_train_s')} s; Megatron vs HF "
                 f"x{r('megatron_vs_hf_train_ratio')} (HF peak {_fmt(r('hf_peak_gpu_gib'))} GiB)")
    checks = []
    if "checkpoint_roundtrip_max_abs" in report:
        checks.append(f"checkpoint round trip max |delta| {r('checkpoint_roundtrip_max_abs')}")
    if "export_vs_learner_max_abs" in report:
        checks.append(f"export vs learner max |delta| {r('export_vs_learner_max_abs'):.2e}")
    if report.get("te_less_fixes") is not None:
        checks.append(f"TE-less fixes applied: {', '.join(report['te_less_fixes']) or 'none'}")
    if checks:
        line += "\n  - " + "; ".join(checks)
    return line


def render(out: Path) -> str:
    lines = ["## Results of tools/gpu_check/run.sh", ""]
    env = _text(out / "env.txt")
    gpu = re.search(r"\|\s+\d+\s+(NVIDIA [^|]+?)\s{2,}", env)
    versions = "; ".join(line for line in env.splitlines()
                         if line.startswith(("torch ", "megatron-core", "python ")) or line.endswith(("installed",
                                                                                                       "absent")))
    lines.append(f"- machine: {gpu.group(1).strip() if gpu else 'no NVIDIA GPU'}; {versions}")
    wheels = _text(out / "wheels.txt").strip()
    if wheels:
        lines.append(f"- {wheels}")
    for part in _text(out / "parts.txt").splitlines():
        lines.append(f"- part {part}")
    log = _text(out / "gpu_tests.log")
    summary = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)", line)]
    if summary:
        lines.append(f"- tests/gpu: {summary[-1].strip('= ')}")
    lines.append(bench_line("bench/gpu_rlad.py", _json(out / "bench" / "gpu_rlad.json")))
    lines.append(bench_line("bench/gpu_rlad.py --teacher-offload", _json(out / "offload" / "gpu_rlad.json")))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1])), end="")
