"""``trainer``: the loop's settings (steps, micro-batches, evaluation, checkpoints, the run folder) and
``trainer.wandb``."""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from rlad_megatron.config.model import DType
from rlad_megatron.config.validators import ConfigError, at_least, choice, in_range

Resume = Literal["never", "auto"]


WandbMode = Literal["online", "offline"]
WANDB_MODES: tuple[str, ...] = typing.get_args(WandbMode)


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging of the per-step metrics (global rank 0 only), next to JSONL and TensorBoard.

    Off by default: nothing is imported or sent unless ``enabled=true``. The API key never belongs in a config:
    ``wandb login`` or the ``WANDB_API_KEY`` environment variable provide it (``mode=offline`` needs none).
    """

    enabled: bool = False
    """Log to W&B as well (needs the ``wandb`` package: ``pip install 'rlad-megatron[wandb]'``)."""
    project: str = "rlad-megatron"
    """W&B project."""
    entity: str | None = None
    """W&B team or user; None: the logged-in user's default."""
    name: str | None = None
    """Run name; None: the name of trainer.output_dir."""
    group: str | None = None
    """Group runs together (e.g. the seeds of one setting)."""
    tags: list[str] = field(default_factory=list)
    """Tags of the run."""
    mode: WandbMode = "online"
    """"online" (stream to the W&B server) or "offline" (write under dir only; ``wandb sync`` uploads later)."""
    dir: str | None = None
    """Where W&B writes its files (a ``wandb/`` folder inside); None: trainer.output_dir."""

    def validate(self) -> None:
        choice("trainer.wandb.mode", self.mode, WandbMode)
        if self.enabled and not self.project:
            raise ConfigError("trainer.wandb.project: give a W&B project name (or set trainer.wandb.enabled=false)")


@dataclass
class TrainerConfig:
    """The loop: steps, micro-batches, evaluation, checkpoints, the run folder and what it logs."""

    steps: int = 100
    """Rollout batches (= weight syncs) to train on."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch (mini-batches); > 1 makes the old-policy log-probs differ from current."""
    micro_batch_size: int = 8
    """Sequences per forward/backward micro-batch on one data-parallel rank (when no token budget is set)."""
    max_tokens_per_micro_batch: int | None = None
    """Token budget of a training micro-batch on one data-parallel rank (rows x padded length, or packed tokens):
    sequences are grouped by length and each micro-batch is padded only to its own longest; None: fixed
    micro-batches of micro_batch_size sequences padded to the step's longest."""
    max_tokens_per_forward_micro_batch: int | None = None
    """Token budget of the forward-only passes (teacher, old-policy and reference log-probs, probes), which keep no
    activations for a backward; None: twice max_tokens_per_micro_batch."""
    sequence_packing: bool = False
    """Pack several sequences into one row with per-sequence boundaries (THD with Transformer Engine, a
    block-diagonal causal mask without it); needs max_tokens_per_micro_batch."""
    fused_logprobs: bool | str = "auto"
    """Log-probs (and entropy) straight from the last hidden states, chunk by chunk, never holding the logits
    [tokens, vocab/TP] or their gradient (the student's training pass, old-policy, reference and Megatron-teacher
    scoring); false: the output layer's logits, then the vocab-parallel kernel. "auto": on unless a model has what
    the fused head does not handle (multi-token prediction); true refuses such a model."""
    skip_uniform_groups: bool = True
    """DAPO dynamic sampling: drop groups whose rewards are all equal (no learning signal)."""
    eval_every: int = 0
    """Evaluate on data.eval_files every N steps and after the last one (0: only after the last step); nothing
    without eval files. Runs on the engine of global rank 0; logged as eval/accuracy (Mean@k), eval/pass@j."""
    eval_samples: int = 1
    """k for Mean@k / Pass@k during periodic evaluation."""
    eval_temperature: float = 0.6
    """Sampling temperature of the periodic evaluation (the paper: 0.6)."""
    eval_top_p: float = 0.95
    """Top-p of the periodic evaluation (the paper: 0.95)."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Newest complete checkpoints kept on disk; older ones are deleted once a new one is complete."""
    output_dir: str = "runs/rlad"
    """Where the run writes metrics.jsonl, tb/, curves.png, train.log, checkpoints/ and hf/."""
    seed: int = 1234
    """Seed of the prompt order, the rollout and evaluation sampling, and the torch/Megatron RNGs."""
    max_consecutive_bad_steps: int = 3
    """A step with a NaN/inf loss or gradient is skipped; this many in a row stop the run."""
    export_hf: bool = True
    """Write the final student as a Hugging Face checkpoint in output_dir/hf."""
    export_dtype: DType | None = None
    """dtype of the exported tensors (and of config.json's "dtype" label): "float32" or "bfloat16"; None: the
    learner's dtype (model.params_dtype). bf16 rounds away updates smaller than ~1/256 of a weight (lr ~1e-6)."""
    resume: Resume = "never"
    """"never": a fresh run (refused when output_dir holds a run, unless --overwrite); "auto": resume from the newest
    complete checkpoint when there is one, else start (for jobs a scheduler restarts). --resume forces resuming."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Optional Weights & Biases logging, off by default; the API key comes from `wandb login` or WANDB_API_KEY."""

    def forward_tokens_per_micro_batch(self) -> int | None:
        """The token budget of the forward-only passes: ``max_tokens_per_forward_micro_batch``, else twice
        ``max_tokens_per_micro_batch`` (a forward keeps no activations for a backward), else None (fixed
        micro-batches). The one place of this rule: the learner's batching and the memory plan ask it."""
        if self.max_tokens_per_forward_micro_batch is not None:
            return self.max_tokens_per_forward_micro_batch
        if self.max_tokens_per_micro_batch is not None:
            return 2 * self.max_tokens_per_micro_batch
        return None

    def validate(self) -> None:
        for name in ("steps", "updates_per_batch", "micro_batch_size", "eval_samples", "keep_checkpoints",
                     "max_consecutive_bad_steps"):
            at_least(f"trainer.{name}", getattr(self, name), 1)
        if self.export_dtype is not None:
            choice("trainer.export_dtype", self.export_dtype, DType)
        choice("trainer.resume", self.resume, Resume)
        for name in ("max_tokens_per_micro_batch", "max_tokens_per_forward_micro_batch"):
            if getattr(self, name) is not None:
                at_least(f"trainer.{name}", getattr(self, name), 1)
        if not (self.fused_logprobs is True or self.fused_logprobs is False or self.fused_logprobs == "auto"):
            raise ConfigError(f"trainer.fused_logprobs={self.fused_logprobs!r}: choose auto, true or false")
        if self.sequence_packing and self.max_tokens_per_micro_batch is None:
            raise ConfigError("trainer.sequence_packing=true needs trainer.max_tokens_per_micro_batch (the length "
                              "of a packed row)")
        at_least("trainer.eval_every", self.eval_every, 0)
        at_least("trainer.save_every", self.save_every, 0)
        at_least("trainer.eval_temperature", self.eval_temperature, 0)
        in_range("trainer.eval_top_p", self.eval_top_p, 0, 1, low_open=True)
        # The engine derives per-request seeds from it; numpy and vLLM need a non-negative 32-bit value.
        in_range("trainer.seed", self.seed, 0, 2**32 - 1)
        if not self.output_dir:
            raise ConfigError("trainer.output_dir: give the folder for this run's checkpoints, metrics and model")
        self.wandb.validate()
