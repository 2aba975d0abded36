"""Supervised training and quick accuracy checks of tiny ``transformers`` causal LMs on a task's reference targets.

This is the quickstart's data-preparation step (teacher pre-training, student warm start), not the product's
trainer: plain torch on the Hugging Face model, loss on the target tokens only.

    model = AutoModelForCausalLM.from_pretrained(path)
    stats = train_sft(model, tokenizer, task, records, steps=800, batch_size=32, lr=3e-3)
    acc = generate_accuracy(model, tokenizer, task, test_records, max_new_tokens=64)
"""
from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from rlad_megatron.models.stop_tokens import end_of_turn_token_id, stop_token_ids
from rlad_megatron.tasks.base import Task


def sft_example(task: Task, record: Mapping[str, Any], tokenizer: Any) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) for supervised pre-training: the target is the reference completion + the token
    that ends the turn (the chat template's end of turn, else eos), the stop token generation will look for.

    Works for any task with a ``reference_completion(record)`` method (the demo task has one).
    """
    prompt_ids = task.encode_prompt(task.build_prompt(record, tokenizer), tokenizer)
    target_text = task.reference_completion(record)  # type: ignore[attr-defined]
    end = end_of_turn_token_id(tokenizer)
    target_ids = list(tokenizer(target_text, add_special_tokens=False)["input_ids"]) + [
        tokenizer.eos_token_id if end is None else end]
    return prompt_ids, target_ids


@dataclass
class SFTStats:
    """What a supervised run did: steps, seconds, the mean target-token loss of the first and last 10 steps."""

    steps: int
    seconds: float
    first_loss: float
    last_loss: float


@dataclass
class AccuracyReport:
    """Accuracy (fraction of correct answers) overall and per difficulty label, with counts and time taken."""

    accuracy: float
    n: int
    by_difficulty: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    mean_response_tokens: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "by_difficulty": self.by_difficulty,
                "seconds": round(self.seconds, 2), "mean_response_tokens": self.mean_response_tokens}


def collate_sft(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                        torch.Tensor]:
    """Right-padded ``input_ids [B, T]``, ``attention_mask [B, T]`` and ``labels [B, T]`` (-100 outside targets).

    ``labels`` are aligned with ``input_ids`` as ``transformers`` expects (the model shifts them itself).
    """
    if not examples:
        raise ValueError("collate_sft needs at least one example")
    length = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for i, (prompt, target) in enumerate(examples):
        seq = prompt + target
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(prompt): len(seq)] = torch.tensor(target)
    return ids, mask, labels


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))  # cosine to 10% of the peak


def train_sft(model: torch.nn.Module, tokenizer: Any, task: Task, records: Sequence[Mapping[str, Any]], *,
              steps: int, batch_size: int, lr: float, seed: int = 0, warmup: int = 20, weight_decay: float = 0.0,
              log: Callable[[str], None] | None = None, log_every: int = 100) -> SFTStats:
    """Train ``model`` in place for ``steps`` AdamW steps on (prompt -> reference completion + eos) of ``records``.

    Batches are drawn without replacement from a seeded shuffle (reshuffled each epoch); the learning rate warms up
    linearly for ``warmup`` steps, then follows a cosine to 10% of ``lr``.
    """
    if steps < 1 or batch_size < 1 or not records:
        raise ValueError(f"train_sft needs steps >= 1, batch_size >= 1 and records; got {steps}, {batch_size}, "
                         f"{len(records)} records")
    examples = [sft_example(task, r, tokenizer) for r in records]
    rng = random.Random(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(steps):
        while len(order) < batch_size:  # (a batch larger than the data spans several shuffles)
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = [examples[order.pop()] for _ in range(batch_size)]
        ids, mask, labels = collate_sft(batch, tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log is not None and (step + 1) % log_every == 0:
            log(f"  sft step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                f"({time.perf_counter() - started:.0f}s)")
    model.eval()
    head, tail = losses[:10], losses[-10:]
    return SFTStats(steps=steps, seconds=time.perf_counter() - started, first_loss=sum(head) / len(head),
                    last_loss=sum(tail) / len(tail))


def _stop_ids(model: torch.nn.Module, tokenizer: Any,
              chat_template_kwargs: Mapping[str, Any] | None) -> tuple[int, ...]:
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config_eos = [] if config_eos is None else config_eos if isinstance(config_eos, list) else [config_eos]
    return tuple(sorted(set(stop_token_ids(tokenizer, (), chat_template_kwargs)) | {int(i) for i in config_eos}))


@torch.no_grad()
def generate_accuracy(model: torch.nn.Module, tokenizer: Any, task: Task, records: Sequence[Mapping[str, Any]], *,
                      max_new_tokens: int, batch_size: int = 64, temperature: float = 0.0,
                      seed: int = 0, chat_template_kwargs: Mapping[str, Any] | None = None) -> AccuracyReport:
    """Accuracy of ``model.generate`` on ``records`` (greedy when ``temperature == 0``), scored by ``task.reward``.

    Prompts are left-padded in batches; generation stops at ``max_new_tokens`` or at any stop token: the
    tokenizer's eos, the model's generation-config eos list and the chat template's end of turn.
    """
    if not records:
        raise ValueError("generate_accuracy needs at least one record")
    model.eval()
    torch.manual_seed(seed)
    started = time.perf_counter()
    correct: dict[str, list[bool]] = defaultdict(list)
    n_tokens = 0
    stops = set(_stop_ids(model, tokenizer, chat_template_kwargs))
    for start in range(0, len(records), batch_size):
        chunk = records[start: start + batch_size]
        prompts = [task.encode_prompt(task.build_prompt(r, tokenizer, chat_template_kwargs), tokenizer)
                   for r in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else \
            dict(do_sample=False)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stops), **sampling)
        for record, row in zip(chunk, out[:, width:].tolist()):
            ends = [i for i, token in enumerate(row) if token in stops]
            if ends:
                row = row[: ends[0]]
            n_tokens += len(row)
            text = tokenizer.decode(row, skip_special_tokens=True)
            correct[task.difficulty(record)].append(task.reward(text, record).correct)
    flat = [c for values in correct.values() for c in values]
    return AccuracyReport(
        accuracy=sum(flat) / len(flat), n=len(flat),
        by_difficulty={k: round(sum(v) / len(v), 4) for k, v in sorted(correct.items())},
        seconds=time.perf_counter() - started, mean_response_tokens=n_tokens / len(flat))
