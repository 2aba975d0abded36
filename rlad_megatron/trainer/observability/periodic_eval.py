"""Evaluation during training: Mean@k / Pass@k of the current student on ``data.eval_files``, through the rollout
engine of the first data-parallel replica (it serves the learner's weights after every sync)."""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

from rlad_megatron.config import RunConfig
from rlad_megatron.data.prompt_dataset import load_prompt_dataset
from rlad_megatron.engine_api import SamplingSettings
from rlad_megatron.eval.evaluate import evaluate


def load_eval_examples(config: RunConfig, task: Any, tokenizer: Any) -> list | None:
    """The evaluation prompts (validated and length-filtered like the training ones), or None without eval files."""
    if not config.data.eval_files:
        return None

    dataset = load_prompt_dataset(config.data.eval_files, task, tokenizer, config.data.max_prompt_tokens,
                                  bad_rows=config.data.bad_rows,
                                  chat_template_kwargs=config.data.chat_template_kwargs,
                                  split=config.data.eval_split or config.data.split, fields=config.data.fields)
    return dataset.examples


def evaluate_now(config: RunConfig, engine: Any, task: Any, tokenizer: Any, examples: list | None,
                 step: int, *, stop_token_ids: tuple[int, ...] = ()) -> dict[str, float]:
    """Collective over the world: global rank 0 evaluates (it holds an engine), the others wait for its metrics.
    With a tensor-parallel engine (vLLM's external launcher) the other shards of rank 0's engine (ranks
    ``1..tp-1``) generate with it and their results are dropped.

    Scored like training: the training task (``data.task_options``), the run's stop tokens, and a cut-off
    response counts as wrong unless ``rollout.truncated=reward``."""
    metrics: dict[str, float] | None = None
    shards = engine.shards if engine is not None else 1
    if dist.get_rank() < shards and examples:
        t = config.trainer
        sampling = SamplingSettings(n=t.eval_samples, temperature=t.eval_temperature, top_p=t.eval_top_p,
                                    max_tokens=config.rollout.max_new_tokens,
                                    stop_token_ids=tuple(stop_token_ids) or (tokenizer.eos_token_id,),
                                    seed=config.trainer.seed + step)
        report = evaluate(engine, task, examples, tokenizer, t.eval_samples, sampling=sampling,
                          credit_truncated=config.rollout.truncated == "reward")
    if dist.get_rank() == 0 and examples:
        metrics = {"eval/accuracy": report.overall.mean_at_k, "eval/mean_reward": report.overall.mean_reward}
        for j, value in report.overall.pass_at.items():
            metrics[f"eval/pass@{j}"] = value
        for label, row in report.by_difficulty.items():
            metrics[f"eval/accuracy/{label}"] = row.mean_at_k
    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0] or {}
