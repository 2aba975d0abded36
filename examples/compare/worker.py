"""Run a comparison's jobs one after another in ONE trainer process (TP=1, world size 1):

    python -m rlad_megatron.launch_local --nproc-per-node 1 -m examples.compare.worker PLAN.json

Why one process: on a 2-core CPU a fresh ``torchrun ... rlad_megatron.cli train`` spends ~30-50 s importing
Megatron, vLLM and transformers before its first step, more than a whole tiny run trains. Each job here is still a
complete, fresh run through the product's own ``Trainer`` (new model-parallel state, new student and teacher built
from the HF directories, new vLLM engine, new optimizer), followed by a vLLM evaluation of the exported student.

A plan is a JSON list of jobs ``{"name", "out_dir", "config" | null, "eval": {...}}``; a job with ``config: null``
only evaluates ``eval.model_dir`` (the teacher, the initial student). A job whose ``out_dir/result.json`` exists is
skipped, so an interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def evaluate_dir(model_dir: str, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Mean@k of the HF checkpoint ``model_dir`` on ``spec["data_file"]`` with the vLLM engine (run_eval)."""
    from rlad_megatron.eval.runner import run_eval

    engine_options: dict[str, Any] = {"kv_cache_bytes": 64 << 20}
    if spec.get("max_num_seqs"):
        engine_options["max_num_seqs"] = spec["max_num_seqs"]
    started = time.perf_counter()
    report = run_eval(model_dir, spec["task"], spec["data_file"], spec["k"], str(out_dir),
                      max_prompt_tokens=spec["max_prompt_tokens"], max_tokens=spec["max_tokens"],
                      temperature=spec["temperature"], top_p=spec["top_p"], seed=spec.get("seed", 0),
                      limit=spec["limit"], bad_rows="error", engine_options=engine_options)
    return {
        "accuracy": report.overall.mean_at_k,
        "by_difficulty": {label: row.mean_at_k for label, row in sorted(report.by_difficulty.items())},
        "mean_reward": report.overall.mean_reward,
        "format_rate": report.overall.format_rate,
        "prompts": report.overall.prompts,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train (when the job has a config) then evaluate; returns what goes into ``result.json``."""
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"name": job["name"], **job.get("meta", {})}
    model_dir = job["eval"].get("model_dir")
    if job.get("config") is not None:
        from rlad_megatron.config import run_config_from_dict
        from rlad_megatron.trainer.loop import train

        config = run_config_from_dict(job["config"])
        started = time.perf_counter()
        train(config)
        result["train_seconds"] = round(time.perf_counter() - started, 1)
        model_dir = str(Path(config.trainer.output_dir) / "hf")
    result["eval"] = evaluate_dir(model_dir, job["eval"], out_dir / "eval")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun --nproc-per-node 1 -m examples.compare.worker PLAN.json", file=sys.stderr)
        return 2
    from rlad_megatron.parallel import init_distributed

    init_distributed()
    jobs = json.loads(Path(argv[0]).read_text())
    failures = 0
    for i, job in enumerate(jobs):
        done = Path(job["out_dir"]) / "result.json"
        if done.exists():
            print(f"[compare] {i + 1}/{len(jobs)} {job['name']}: done earlier, skipped", flush=True)
            continue
        print(f"[compare] {i + 1}/{len(jobs)} {job['name']}: start", flush=True)
        started = time.perf_counter()
        try:
            result = run_job(job)
        except Exception:  # one failed run must not cost the others; its error is kept next to its outputs
            failures += 1
            text = traceback.format_exc()
            Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(job["out_dir"]) / "error.txt").write_text(text)
            print(f"[compare] {job['name']}: FAILED\n{text}", flush=True)
            continue
        result["seconds"] = round(time.perf_counter() - started, 1)
        done.write_text(json.dumps(result, indent=2))
        print(f"[compare] {job['name']}: accuracy {result['eval']['accuracy']:.3f} ({result['seconds']:.0f}s)",
              flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
