"""The quickstart's settings: data, the two tiny models, their supervised preparation, the RLAD run, evaluation.

The defaults were chosen by measurement on a 2-core CPU machine (see the README's quickstart section): the teacher
reaches high accuracy in a few CPU minutes, the warm-started student gets some reward but is clearly worse, with
room for RLAD to improve it in a few minutes of training.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

#: Bump when the preparation code changes in a way that changes the cached models.
PREPARATION_VERSION = 1


@dataclass
class DataSettings:
    n_train: int = 4000
    """Training prompts (RLAD samples from them; the supervised preparation uses their reference targets)."""
    n_test: int = 200
    """Held-out prompts for every evaluation (disjoint from train)."""
    min_digits: int = 1
    max_digits: int = 3
    """Difficulty = digits of the longer operand; the chain of thought has one line per digit."""
    seed: int = 0


@dataclass
class ModelSettings:
    """A tiny ``transformers`` model (char tokenizer) and its supervised preparation on reference targets."""

    num_layers: int = 2
    hidden_size: int = 128
    intermediate_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    family: str = "llama"
    init_seed: int = 0
    sft_steps: int = 1000
    """AdamW steps on (prompt -> reference chain of thought + eos)."""
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    sft_seed: int = 0

    def shape(self) -> dict[str, Any]:
        return dict(num_layers=self.num_layers, hidden_size=self.hidden_size,
                    intermediate_size=self.intermediate_size, num_heads=self.num_heads,
                    num_kv_heads=self.num_kv_heads)


def _default_student() -> ModelSettings:
    # 2 heads of 32 (vLLM's CPU attention needs head_dim % 32 == 0; TP=2 needs heads and KV heads % 2 == 0).
    return ModelSettings(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=2,
                         init_seed=1, sft_steps=400, sft_lr=3e-3, sft_seed=1)


@dataclass
class RLSettings:
    """The RLAD run (written into the trainer's YAML config)."""

    steps: int = 100
    algorithm: str = "rlad"
    alpha: float = 0.5
    prompts_per_step: int = 64
    """Many prompts per step: ~60% of the groups have uniform rewards (no signal) and are skipped."""
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 2e-4
    """Measured: 1e-3 collapsed the warm-started student in one step (reward 0.20 -> 0.02); 3e-4 with 32 prompts
    per step stayed flat over 40 steps; 2e-4 with 5 warm-up steps and 64 prompts rises."""
    warmup_steps: int = 5
    micro_batch_size: int = 64
    nproc: int = 2
    tensor_parallel: int = 2
    save_every: int = 10


@dataclass
class EvalSettings:
    k: int = 1
    """Samples per test prompt (Mean@k)."""
    temperature: float = 0.6
    top_p: float = 0.95
    limit: int | None = None
    """Evaluate on the first ``limit`` test prompts only (None: all)."""


@dataclass
class QuickstartSettings:
    data: DataSettings = field(default_factory=DataSettings)
    teacher: ModelSettings = field(default_factory=ModelSettings)
    student: ModelSettings = field(default_factory=_default_student)
    rl: RLSettings = field(default_factory=RLSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    torch_threads: int = 1
    """Threads for the supervised preparation. One: these matrices are tiny, and with two threads on a busy
    2-core machine OpenMP's spinning threads burned over 10x the CPU time per step (measured)."""
    prep_eval_prompts: int = 200
    """Test prompts for the quick greedy ``transformers`` accuracy check after each preparation."""

    @property
    def max_new_tokens(self) -> int:
        """Longest response: one ``a+b+c=ss`` line (<= 9 chars) per digit + ``#### <answer>`` + margin."""
        return 9 * self.data.max_digits + 8 + self.data.max_digits + 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able settings (cache keys): 12 hex digits of SHA-256."""
    text = json.dumps([PREPARATION_VERSION, *[dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p
                                              for p in parts]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
