"""Render tools/gpu_check/run.sh's results (``OUT`` folder) as the Markdown section that goes into docs/gpu.md."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def render(out: Path) -> str:
    lines = ["## Results of tools/gpu_check/run.sh", ""]
    env = (out / "env.txt").read_text() if (out / "env.txt").exists() else ""
    versions = [line for line in env.splitlines() if line.startswith("torch ")]
    gpu = re.search(r"\|\s+\d+\s+(NVIDIA [^|]+?)\s{2,}", env)
    lines.append(f"- machine: {gpu.group(1).strip() if gpu else 'unknown GPU'}; {versions[0] if versions else ''}")
    log = (out / "pytest_gpu.log").read_text() if (out / "pytest_gpu.log").exists() else ""
    summary = [line for line in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    lines.append(f"- tests/gpu: {summary[-1].strip('= ') if summary else 'no summary (see pytest_gpu.log)'}")
    for name, path in (("bench/gpu_rlad.py", out / "gpu_rlad.json"),
                       ("bench/gpu_rlad.py --teacher-offload", out / "offload" / "gpu_rlad.json")):
        report = _json(path)
        if report is None:
            lines.append(f"- {name}: no result (see the logs)")
            continue
        lines.append(f"- {name}: {report['dtype']}, student {report['student_params_m']}M parameters, "
                     f"{report['sequences_per_step']} sequences x {report['tokens_per_step'] // report['sequences_per_step']} "
                     f"tokens per step: learner step {report['learner_train_tokens_per_s']:.0f} tokens/s "
                     f"({report['train_s_median']} s), teacher scoring {report['teacher_score_tokens_per_s']:.0f} "
                     f"tokens/s, Megatron vs HF eager train step x{report['megatron_vs_hf_train_ratio']}, peak GPU "
                     f"{report['peak_gpu_gib']} GiB; checkpoint round trip max |delta| "
                     f"{report['checkpoint_roundtrip_max_abs']}, export vs learner max |delta| "
                     f"{report['export_vs_learner_max_abs']:.2e}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1])), end="")
