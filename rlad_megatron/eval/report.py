"""The evaluation report: overall and per-difficulty rows, JSON and markdown output."""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from rlad_megatron.atomic_write import write_json, write_text


@dataclasses.dataclass
class EvalRow:
    """Aggregates over a set of prompts (all of them, or one difficulty level).

    mean_at_k: mean over prompts of the fraction of correct samples (the paper's Mean@k).
    pass_at: {j: mean over prompts of the unbiased Pass@j}.
    """

    prompts: int
    samples: int
    mean_at_k: float
    pass_at: dict[int, float]
    mean_reward: float
    format_rate: float
    truncated_rate: float
    mean_response_tokens: float


def natural_key(label: str) -> list[Any]:
    """Sort "ppl2" < "ppl10" and "d3" < "d12"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


@dataclasses.dataclass
class EvalReport:
    """What :func:`rlad_megatron.eval.evaluate.evaluate` returns."""

    task: str
    k: int
    samples_per_prompt: int
    sampling: dict[str, Any]
    overall: EvalRow
    by_difficulty: dict[str, EvalRow]
    reward_stats: dict[str, float]
    per_prompt: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        """A table with one row per difficulty and an "all" row (the paper's per-size / per-benchmark columns)."""
        ks = sorted(self.overall.pass_at)
        head = ["difficulty", "prompts", f"Mean@{self.samples_per_prompt}"] + [f"Pass@{j}" for j in ks] + \
               ["reward", "format", "truncated", "resp. tokens"]
        lines = [f"### {self.task}: k={self.k}, {self.samples_per_prompt} samples/prompt, "
                 f"temperature {self.sampling.get('temperature')}, top-p {self.sampling.get('top_p')}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = sorted(self.by_difficulty.items(), key=lambda kv: natural_key(kv[0])) + [("all", self.overall)]
        for label, r in rows:
            cells = [label, str(r.prompts), f"{r.mean_at_k:.4f}"] + [f"{r.pass_at[j]:.4f}" for j in ks] + \
                    [f"{r.mean_reward:.3f}", f"{r.format_rate:.3f}", f"{r.truncated_rate:.3f}",
                     f"{r.mean_response_tokens:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        errs = self.reward_stats
        lines += ["", f"reward errors: {int(errs.get('reward/errors', 0))}, "
                      f"timeouts: {int(errs.get('reward/timeouts', 0))}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str, stem: str = "eval") -> tuple[str, str]:
        """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        jpath, mpath = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")

        write_json(jpath, self.to_dict(), indent=2, sort_keys=True)
        write_text(mpath, self.to_markdown())
        return jpath, mpath


@dataclasses.dataclass
class SuiteReport:
    """Several benchmarks evaluated in one call (``rlad-megatron eval --data a=...,b=...``): one report each."""

    reports: dict[str, EvalReport]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"benchmarks": {name: r.to_dict() for name, r in self.reports.items()}, **self.data}

    def summary_markdown(self) -> str:
        """One row per benchmark: its task, prompts, Mean@n, Pass@j, reward, format and truncated rates."""
        ks = sorted({j for r in self.reports.values() for j in r.overall.pass_at})
        head = ["benchmark", "task", "prompts", "Mean@n"] + [f"Pass@{j}" for j in ks] + \
               ["reward", "format", "truncated", "resp. tokens"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, r in self.reports.items():
            o = r.overall
            cells = [name, r.task, str(o.prompts), f"{o.mean_at_k:.4f}"] + \
                    [f"{o.pass_at[j]:.4f}" if j in o.pass_at else "-" for j in ks] + \
                    [f"{o.mean_reward:.3f}", f"{o.format_rate:.3f}", f"{o.truncated_rate:.3f}",
                     f"{o.mean_response_tokens:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        first = next(iter(self.reports.values()))
        note = (f"n = {first.samples_per_prompt} samples/prompt, temperature {first.sampling.get('temperature')}, "
                f"top-p {first.sampling.get('top_p')}")
        return "\n".join([note, "", *lines]) + "\n"

    def to_markdown(self) -> str:
        """The summary table, then each benchmark's table by difficulty."""
        parts = ["## Benchmarks", "", self.summary_markdown()]
        for name, r in self.reports.items():
            parts += [f"## {name}", "", r.to_markdown()]
        return "\n".join(parts)

    def write(self, out_dir: str, stem: str = "eval") -> tuple[str, str]:
        """Write ``<stem>.json`` (every benchmark's report) and ``<stem>.md``; returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        jpath, mpath = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.md")

        write_json(jpath, self.to_dict(), indent=2, sort_keys=True)
        write_text(mpath, self.to_markdown())
        return jpath, mpath
