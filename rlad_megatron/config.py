"""The run configuration: one small dataclass per component, a YAML file, and dotted command-line overrides.

    config = load_run_config("configs/quickstart.yaml", ["loss.alpha=0.3", "trainer.steps=20"])

Defaults live only in these dataclasses (the loss's in ``rlad_megatron.loss.config.LossConfig``, the engine's in
``rlad_megatron.rollout.config.VLLMEngineConfig``). An unknown key, a value of the wrong type or an invalid value is a
``ConfigError`` that names the dotted key and says what is accepted (parsing: ``rlad_megatron.config_parsing``).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

# ConfigError and apply_overrides are part of this module's interface; the parsing machinery lives apart.
from rlad_megatron.config_parsing import ConfigError, apply_overrides, build_dataclass  # noqa: F401
from rlad_megatron.loss.config import LossConfig
from rlad_megatron.loss.policy_loss import required_inputs


def _at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # also false for NaN
        raise ConfigError(f"{key} must be >= {low}, got {value}")


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{key} must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, "
                          f"got {value}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(repr(c) for c in choices)}")


@dataclass
class ModelConfig:
    student: str = ""
    """Hugging Face directory of the student (config.json, safetensors, tokenizer): the initial weights."""
    teacher: str | None = None
    """Hugging Face directory of the teacher; required by ``rlad`` and ``kdrl`` (and by ``sft`` to generate)."""
    params_dtype: str = "float32"
    """Learner parameter dtype: "float32" or "bfloat16"."""
    trust_remote_code: bool = False
    """Allow model code shipped inside a checkpoint folder (off: only the built-in Llama/Qwen families load)."""

    def validate(self) -> None:
        if not self.student:
            raise ConfigError("model.student: give the student's Hugging Face directory")
        if self.params_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"model.params_dtype={self.params_dtype!r}: choose 'float32' or 'bfloat16'")


@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    """Tensor-parallel size of the learner (and of the Megatron teacher)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size; data parallelism is world_size / (tensor_parallel * pipeline_parallel)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs tensor_parallel > 1)."""
    first_stage_layers: int | None = None
    """Student layers on the first pipeline stage (uneven PP; None: an even stage). The stages without an explicit
    count split the other layers evenly."""
    last_stage_layers: int | None = None
    """Student layers on the last pipeline stage (uneven PP; None: an even stage)."""
    teacher_first_stage_layers: int | None = None
    """The Megatron teacher's layers on the first pipeline stage (it may be deeper than the student)."""
    teacher_last_stage_layers: int | None = None
    """The Megatron teacher's layers on the last pipeline stage."""
    context_parallel: int = 1
    """Context-parallel size: each row split across this many ranks (TE's attention on GPUs, an all-gather
    attention of ours without TE; docs/token_budgets.md)."""
    expert_parallel: int = 1
    """Expert-parallel size of the Mixture-of-Experts models (student and Megatron teacher): each MoE layer's
    routed experts are split over this many data-parallel ranks of a pipeline stage (a divisor of
    world_size / pipeline_parallel, dividing the experts per layer). Dense models ignore it."""
    expert_tensor_parallel: int = 1
    """Tensor-parallel size inside each routed expert; only 1 is supported (experts are placed whole)."""
    recompute: str = "none"
    """Activation recomputation in the learner: "none", "selective" (attention core only) or "full" (whole
    layers, recompute_num_layers per chunk)."""
    recompute_num_layers: int = 1
    """With recompute="full": layers per recomputed chunk (Megatron's uniform method)."""

    def validate(self) -> None:
        if self.tensor_parallel < 1 or self.pipeline_parallel < 1:
            raise ConfigError("parallel.tensor_parallel and parallel.pipeline_parallel must be >= 1")
        for name in ("first_stage_layers", "last_stage_layers", "teacher_first_stage_layers",
                     "teacher_last_stage_layers"):
            value = getattr(self, name)
            if value is not None and (value < 1 or self.pipeline_parallel == 1):
                raise ConfigError(f"parallel.{name}={value}: must be >= 1 and needs parallel.pipeline_parallel > 1 "
                                  "(the model's layer count is checked when it is loaded)")
        if self.sequence_parallel and self.tensor_parallel == 1:
            raise ConfigError("parallel.sequence_parallel=true needs parallel.tensor_parallel > 1")
        _at_least("parallel.context_parallel", self.context_parallel, 1)
        _at_least("parallel.expert_parallel", self.expert_parallel, 1)
        if self.expert_tensor_parallel != 1:
            raise ConfigError(f"parallel.expert_tensor_parallel={self.expert_tensor_parallel}: only 1 is supported "
                              "(routed experts are placed whole, split over parallel.expert_parallel ranks; the "
                              "name table, conversion and weight sync have no expert-TP slicing): set it to 1 and "
                              "raise parallel.expert_parallel instead")
        if self.recompute not in ("none", "selective", "full"):
            raise ConfigError(f"parallel.recompute={self.recompute!r}: choose 'none', 'selective' or 'full'")
        _at_least("parallel.recompute_num_layers", self.recompute_num_layers, 1)


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: responses sampled per prompt (the GRPO group)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus-sampling threshold of the rollouts (1.0: the whole distribution)."""
    max_new_tokens: int = 64
    """Longest response; longer ones are cut and flagged as truncated."""
    placement: str = "colocated"
    """"colocated" (engine in the learner's process) or "disaggregated" (engine in its own process)."""
    dtype: str = "float32"
    """Engine dtype ("float32" or "bfloat16")."""
    kv_cache_mb: int = 256
    """vLLM KV-cache size in MiB (must be given on CPU)."""
    weight_load: str = "inplace"
    """"inplace" (copy into the engine's parameters: a 100M-parameter sync costs ~3x a memcpy) or "vllm_reload"
    (vLLM's layerwise reload, ~8x). On CPU, "inplace" keeps plain torch GEMMs in vLLM, which generate ~1.6x slower
    than its oneDNN pre-packed ones at 100M parameters (bench/weight_sync.py): prefer "vllm_reload" for CPU runs of
    larger models, where generation dominates the step."""
    verify_every: int = 1
    """Check after every N-th weight sync that the engine serves the learner's weights (0: never)."""
    max_logprob_mismatch: float | None = None
    """Largest per-token engine-vs-learner |log-prob difference| on the sync probe (sampled sequences of the latest
    rollouts). None: calibrated per dtype (weight_sync/verify.py TOLERANCES: fp32 1e-3, bf16 1.0, fp8 3.0)."""
    mean_logprob_mismatch: float | None = None
    """Largest mean |log-prob difference| on the probe. None: per dtype (fp32 1e-4, bf16 0.02, fp8 0.15)."""
    mismatch_stops_fp8: bool = False
    """With FP8 (fp8.enabled or fp8.rollout_fp8) a mismatch beyond the tolerance is reported
    (sync/logprob_over_tolerance) rather than stopping the run; true: stop as with other dtypes."""
    tis_cap: float | None = None
    """Truncated importance sampling: weight tokens by min(pi_learner_old / pi_engine, cap); None disables."""
    truncated: str = "zero"
    """What a response cut off at max_new_tokens earns (rlad_megatron/trainer/truncation.py): "zero" (no credit:
    reward min(reward, 0), counted wrong), "mask" (DAPO overlong filtering: out of the loss and of its group's
    statistics) or "reward" (the verifier's reward, which may credit an answer the model never finished)."""
    overlong_cache: int = 0
    """DAPO's soft overlong penalty: over the last overlong_cache tokens before max_new_tokens the reward loses up
    to overlong_penalty, linearly (0 disables)."""
    overlong_penalty: float = 1.0
    """The penalty at max_new_tokens tokens (DAPO: 1.0), added to the reward on top of rollout.truncated."""
    reward_timeout_s: float = 10.0
    """Longest a reward may take on one sample (then reward 0, counted in reward/timeouts). Rewards that may hang
    (the math verifier) run in worker processes, several at once, so a step with a few hostile samples takes about
    one timeout."""
    executor: str = "auto"
    """How the colocated engine runs (docs/gpu.md): "external_launcher" (vLLM's SPMD executor inside the torchrun
    world: every rank holds one shard of an engine whose tensor parallelism is the learner's, on its own GPU),
    "uni" (one whole engine on the first rank of each model-parallel group, in a one-rank vLLM world: the CPU
    default) or "auto" (external_launcher on GPUs, uni on CPU)."""
    enforce_eager: bool | None = None
    """Run vLLM without CUDA graphs. None: CUDA graphs on GPUs (decode of small models is launch-bound without
    them), eager on CPU (required there)."""
    gpu_memory_utilization: float | None = None
    """GPU only: the fraction of each GPU the colocated engine may take (weights + KV cache). None: vLLM's
    default (0.92) when the engine has the GPU to itself; with the learner on the same GPU, the smaller of the
    engine's share in the memory plan and what is free at engine start minus a margin (trainer/engine_settings.py).
    On CPU rollout.kv_cache_mb sizes the cache."""
    sleep_level: int = 0
    """GPU only (colocation): 0 keeps the engine's memory during training; 1 moves its weights to host memory and
    frees its KV cache while the learner trains; 2 frees both (the sync rewrites every weight). Weights are woken
    before the weight sync, the KV cache before generation."""
    seed_requests: bool | None = None
    """Seed every request (reproducible samples, but vLLM's sampler takes its slower per-request path). None: on
    CPU yes (the test suite compares runs), on GPUs no (the engine's seed still fixes the stream per run)."""
    mode: str = "sync"
    """"sync": each step generates its batch, then trains on it. "async" (docs/async_rollouts.md): the engine
    process generates batch t+1 while the learner trains on batch t (one-step off-policy); needs
    rollout.placement=disaggregated (the engine in its own process)."""
    max_staleness: int = 1
    """async: the most weight versions a batch may lag behind the learner when it is trained on; older batches are
    dropped (regenerated with the current weights) and counted in rollout/stale_dropped. 0: the engine never runs
    ahead (exactly the synchronous run); >= 1: it generates one batch ahead (the engine serves one request at a
    time, so a batch lags at most one version)."""
    engine_cpus: int = 0
    """CPU only, disaggregated placement: pin the engine process to this many cores (the last ones this job may
    use, one thread each) and give the learner ranks the other cores' worth of threads, so that they do not take
    each other's cores (0: no pinning, every process takes its default threads)."""

    def validate(self) -> None:
        if self.executor not in ("auto", "uni", "external_launcher"):
            raise ConfigError(f"rollout.executor={self.executor!r}: choose 'auto', 'uni' or 'external_launcher'")
        if self.executor == "external_launcher" and self.placement != "colocated":
            raise ConfigError("rollout.executor='external_launcher' shards the engine over the learner's ranks: it "
                              "needs rollout.placement='colocated'")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization < 1:
            raise ConfigError(f"rollout.gpu_memory_utilization must be in (0, 1) or null, got "
                              f"{self.gpu_memory_utilization}")
        if self.sleep_level not in (0, 1, 2):
            raise ConfigError(f"rollout.sleep_level must be 0, 1 or 2, got {self.sleep_level}")
        if self.sleep_level and self.placement != "colocated":
            raise ConfigError("rollout.sleep_level > 0 frees the engine's GPU memory for a learner on the same GPU: "
                              "it needs rollout.placement='colocated'")
        if self.group_size < 1:
            raise ConfigError(f"rollout.group_size must be >= 1, got {self.group_size}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ConfigError(f"rollout.temperature must be > 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"rollout.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.placement not in ("colocated", "disaggregated"):
            raise ConfigError(f"rollout.placement={self.placement!r}: choose 'colocated' or 'disaggregated'")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ConfigError(f"rollout.tis_cap must be > 0 or null, got {self.tis_cap}")
        if self.truncated not in ("reward", "zero", "mask"):
            raise ConfigError(f"rollout.truncated={self.truncated!r}: choose 'zero', 'mask' or 'reward'")
        if not 0 <= self.overlong_cache <= self.max_new_tokens:
            raise ConfigError(f"rollout.overlong_cache must be in [0, rollout.max_new_tokens={self.max_new_tokens}], "
                              f"got {self.overlong_cache}")
        if not 0 <= self.overlong_penalty < float("inf"):
            raise ConfigError(f"rollout.overlong_penalty must be a finite number >= 0, got {self.overlong_penalty}")
        _choice("rollout.dtype", self.dtype, ("float32", "bfloat16"))
        _choice("rollout.weight_load", self.weight_load, ("inplace", "vllm_reload"))
        _at_least("rollout.kv_cache_mb", self.kv_cache_mb, 1)
        _at_least("rollout.verify_every", self.verify_every, 0)
        for key in ("max_logprob_mismatch", "mean_logprob_mismatch"):
            if getattr(self, key) is not None:
                _at_least(f"rollout.{key}", getattr(self, key), 0)
        _in_range("rollout.reward_timeout_s", self.reward_timeout_s, 0, 3600, low_open=True)
        _check_rollout_mode(self)


def _check_rollout_mode(r: RolloutConfig) -> None:
    """``rollout.mode`` / ``max_staleness`` / ``engine_cpus``: async needs the engine in its own process."""
    if r.mode not in ("sync", "async"):
        raise ConfigError(f"rollout.mode={r.mode!r}: choose 'sync' or 'async'")
    if r.max_staleness < 0:
        raise ConfigError(f"rollout.max_staleness must be >= 0 (weight versions a batch may lag), got {r.max_staleness}")
    if r.engine_cpus < 0:
        raise ConfigError(f"rollout.engine_cpus must be >= 0, got {r.engine_cpus}")
    if r.engine_cpus and r.placement != "disaggregated":
        raise ConfigError("rollout.engine_cpus pins the engine process's cores: it needs "
                          "rollout.placement='disaggregated'")
    if r.mode == "async" and r.placement != "disaggregated":
        raise ConfigError("rollout.mode='async' generates the next batch while the learner trains, which needs the "
                          "engine in a process of its own: set rollout.placement='disaggregated' (on GPUs the "
                          "engines take GPUs after the learner's), or rollout.mode='sync'")
    if r.mode == "async" and r.max_staleness >= 1 and (r.temperature != 1.0 or r.top_p != 1.0):
        raise ConfigError(
            f"rollout.mode='async' trains on batches sampled by the previous weights and takes the engine's log-probs "
            f"as the sampling policy's, but with temperature={r.temperature} / top_p={r.top_p} those are of the "
            "tempered/truncated distribution, not the model's: set rollout.temperature=1 and rollout.top_p=1, or "
            "rollout.max_staleness=0, or rollout.mode='sync'")


@dataclass
class DataConfig:
    task: str = "arithmetic"
    """A built-in task ('arithmetic', 'knights_knaves', 'math', 'multiple_choice', ...) or your own code:
    'my_pkg.rewards:MyTask' (a Task subclass) or 'my_reward.py:my_reward' (a reward function, relative to this
    file's folder; docs/tasks_and_data.md)."""
    train_files: list[str] = field(default_factory=list)
    """jsonl/json/parquet/arrow/csv files, dataset folders (save_to_disk or hub layout), or hub:ORG/NAME[:CONFIG].
    Relative paths are taken from the config file's folder (from the working directory on the command line)."""
    eval_files: list[str] = field(default_factory=list)
    """Held-out files of the periodic evaluation (see trainer.eval_every); empty: no evaluation."""
    fields: dict[str, str] = field(default_factory=dict)
    """Column mapping {field: column or dotted path}, e.g. {prompt: question, answer: reward_model.ground_truth}:
    the names the task reads, taken from your columns (the other columns stay on each record)."""
    split: str = "train"
    """Split of dataset folders and hub datasets in train_files (a file is read whole)."""
    eval_split: str | None = None
    """Split of dataset folders and hub datasets in eval_files; None: data.split."""
    prompts_per_step: int = 8
    """Prompts per rollout batch (global, over all data-parallel replicas)."""
    max_prompt_tokens: int = 128
    """Prompts longer than this are filtered out (and counted)."""
    bad_rows: str = "error"
    """"error": stop on a malformed row, naming file, row and field; "skip": drop it and count it."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Options of the task's constructor, for training, periodic evaluation (and `eval --task-option`), e.g.
    {fallbacks: true} for math. Training starts from the task's training defaults (math: answer fallbacks off)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the tokenizer's chat template for every prompt the student and the teacher see, e.g.
    {enable_thinking: false} for Qwen3's non-thinking mode (the eval CLI: --chat-template-kwarg)."""

    def validate(self) -> None:
        if not self.train_files:
            raise ConfigError("data.train_files: give at least one training file (jsonl/parquet/arrow)")
        if self.prompts_per_step < 1:
            raise ConfigError(f"data.prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.bad_rows not in ("error", "skip"):
            raise ConfigError(f"data.bad_rows={self.bad_rows!r}: choose 'error' or 'skip'")
        for name in ("task_options", "chat_template_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ConfigError(f"data.{name}: expected a mapping of names to values, got {value!r}")
        _at_least("data.max_prompt_tokens", self.max_prompt_tokens, 1)
        for target, source in self.fields.items():
            if not target or not source or not isinstance(source, str):
                raise ConfigError(f"data.fields.{target}={source!r}: map a field name to a column name or dotted "
                                  "path, e.g. {prompt: question, answer: reward_model.ground_truth}")
        if not self.split or self.eval_split == "":
            raise ConfigError("data.split / data.eval_split: give a split name, e.g. train or test")
        from rlad_megatron.tasks.registry import check_task_reference

        problem = check_task_reference(self.task, resolve=False)  # its code is found where the job runs
        if problem:
            raise ConfigError(problem)


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate (paper: 1e-6 for 1.7B-8B students)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay (0 <= min_lr <= lr)."""
    warmup_steps: int = 0
    """Steps of linear warm-up to lr before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam first-moment decay."""
    adam_beta2: float = 0.999
    """Adam second-moment decay."""
    adam_eps: float = 1e-8
    """Adam denominator epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks (Megatron's DistributedOptimizer)."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.min_lr < 0 or self.min_lr > self.lr:
            raise ConfigError(f"optim.min_lr must be in [0, optim.lr={self.lr}], got {self.min_lr}")
        _at_least("optim.warmup_steps", self.warmup_steps, 0)
        _at_least("optim.weight_decay", self.weight_decay, 0)
        _in_range("optim.adam_beta1", self.adam_beta1, 0, 1, high_open=True)
        _in_range("optim.adam_beta2", self.adam_beta2, 0, 1, high_open=True)
        _in_range("optim.adam_eps", self.adam_eps, 0, 1, low_open=True)
        _at_least("optim.clip_grad", self.clip_grad, 0)


WANDB_MODES: tuple[str, ...] = ("online", "offline")


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
    mode: str = "online"
    """"online" (stream to the W&B server) or "offline" (write under dir only; ``wandb sync`` uploads later)."""
    dir: str | None = None
    """Where W&B writes its files (a ``wandb/`` folder inside); None: trainer.output_dir."""

    def validate(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ConfigError(f"trainer.wandb.mode={self.mode!r}: choose one of {list(WANDB_MODES)}")
        if self.enabled and not self.project:
            raise ConfigError("trainer.wandb.project: give a W&B project name (or set trainer.wandb.enabled=false)")


@dataclass
class TrainerConfig:
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
    export_dtype: str | None = None
    """dtype of the exported tensors (and of config.json's "dtype" label): "float32" or "bfloat16"; None: the
    learner's dtype (model.params_dtype). bf16 rounds away updates smaller than ~1/256 of a weight (lr ~1e-6)."""
    resume: str = "never"
    """"never": a fresh run (refused when output_dir holds a run, unless --overwrite); "auto": resume from the newest
    complete checkpoint when there is one, else start (for jobs a scheduler restarts). --resume forces resuming."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Optional Weights & Biases logging, off by default; the API key comes from `wandb login` or WANDB_API_KEY."""

    def validate(self) -> None:
        for name in ("steps", "updates_per_batch", "micro_batch_size", "eval_samples", "keep_checkpoints",
                     "max_consecutive_bad_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.export_dtype not in (None, "float32", "bfloat16"):
            raise ConfigError(f"trainer.export_dtype={self.export_dtype!r}: choose 'float32', 'bfloat16' or null "
                              "(the learner's dtype)")
        if self.resume not in ("never", "auto"):
            raise ConfigError(f"trainer.resume={self.resume!r}: choose 'never' or 'auto'")
        for name in ("max_tokens_per_micro_batch", "max_tokens_per_forward_micro_batch"):
            if getattr(self, name) is not None:
                _at_least(f"trainer.{name}", getattr(self, name), 1)
        if not (self.fused_logprobs is True or self.fused_logprobs is False or self.fused_logprobs == "auto"):
            raise ConfigError(f"trainer.fused_logprobs={self.fused_logprobs!r}: choose auto, true or false")
        if self.sequence_packing and self.max_tokens_per_micro_batch is None:
            raise ConfigError("trainer.sequence_packing=true needs trainer.max_tokens_per_micro_batch (the length "
                              "of a packed row)")
        _at_least("trainer.eval_every", self.eval_every, 0)
        _at_least("trainer.save_every", self.save_every, 0)
        _at_least("trainer.eval_temperature", self.eval_temperature, 0)
        _in_range("trainer.eval_top_p", self.eval_top_p, 0, 1, low_open=True)
        # The engine derives per-request seeds from it; numpy and vLLM need a non-negative 32-bit value.
        _in_range("trainer.seed", self.seed, 0, 2**32 - 1)
        if not self.output_dir:
            raise ConfigError("trainer.output_dir: give the folder for this run's checkpoints, metrics and model")
        self.wandb.validate()


@dataclass
class TeacherConfig:
    source: str = "megatron"
    """Where teacher log-probs come from: "megatron" (frozen GPTModel, same TP/PP) or "vllm" (a vLLM engine)."""
    offload: bool = False
    """GPU only: keep the Megatron teacher's weights in pinned host memory between scoring passes (copied back to
    the GPU for each pass: ~params x 2 bytes / PCIe bandwidth per step). A clear error on CPU."""

    def validate(self) -> None:
        if self.source not in ("megatron", "vllm"):
            raise ConfigError(f"teacher.source={self.source!r}: choose 'megatron' or 'vllm'")


FP8_FORMATS: tuple[str, ...] = ("e4m3", "hybrid")
"""megatron-core's ``TransformerConfig.fp8`` values: all-e4m3, or e4m3 forward with e5m2 gradients."""

FP8_RECIPES: tuple[str, ...] = ("delayed", "tensorwise", "mxfp8", "blockwise")
"""megatron-core's ``Fp8Recipe`` names we expose ('custom' needs a quantizer factory: not exposed)."""


@dataclass
class FP8Settings:
    enabled: bool = False
    """FP8 training through Transformer Engine (GPU only; a clear error elsewhere)."""
    format: str = "hybrid"
    """"e4m3" or "hybrid" (e4m3 forward, e5m2 backward)."""
    recipe: str = "delayed"
    """Scaling recipe: "delayed", "tensorwise", "mxfp8" or "blockwise"."""
    fp8_params: bool = False
    """Keep parameters in FP8 (saves memory; needs the distributed optimizer)."""
    rollout_fp8: bool = False
    """Serve rollouts from vLLM with FP8 weights."""

    def validate(self) -> None:
        """Names and combinations only: whether FP8 can run on this machine is checked at job start
        (:func:`rlad_megatron.fp8.check_fp8_available`), so a config validates on a login node or a laptop."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"fp8.enabled must be true or false, got {self.enabled!r}")
        if self.format not in FP8_FORMATS:
            raise ConfigError(f"fp8.format={self.format!r}: choose one of {list(FP8_FORMATS)} "
                              "('hybrid' = e4m3 forward, e5m2 gradients)")
        if self.recipe not in FP8_RECIPES:
            raise ConfigError(f"fp8.recipe={self.recipe!r}: choose one of {list(FP8_RECIPES)}")
        if self.fp8_params and not self.enabled:
            raise ConfigError("fp8.fp8_params=true keeps weights in FP8 and needs fp8.enabled=true")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    fp8: FP8Settings = field(default_factory=FP8Settings)

    def validate(self) -> "RunConfig":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            validate = getattr(section, "validate", None)
            if validate is None:
                continue
            try:
                validate()
            except ConfigError:
                raise
            except ValueError as err:  # sections defined elsewhere raise plain ValueError
                raise ConfigError(f"{f.name}: {err}") from err
        pending = required_inputs(self.loss) & LOSS_INPUTS_NOT_YET_IN_TRAINER
        if pending:  # the loss has them (issue 33); the trainer's top-k teacher pass and pass-rate carry come next
            keys = (["loss.topk_beta / loss.kd_estimator=topk"] if "teacher_topk_logprobs" in pending else []) + (
                ["loss.teacher_trust"] if "teacher_pass_rate" in pending else [])
            raise ConfigError(f"{' and '.join(keys)}: the trainer does not provide {sorted(pending)} yet; train "
                              "with loss.topk_beta=0, loss.kd_estimator=k1|k2|k3 and loss.teacher_trust=none")
        if teacher_use(self.loss) != "none" and not self.model.teacher:
            raise ConfigError(f"loss.algorithm={self.loss.algorithm!r} needs model.teacher (a HF directory)")
        validate_fp8_run(self)
        return self


TeacherUse = typing.Literal["logprobs", "samples", "none"]

#: Loss inputs the loss functions accept but the trainer does not compute yet (top-k teacher signals, the per-prompt
#: teacher pass rate): a run config asking for them is refused rather than failing at its first step.
LOSS_INPUTS_NOT_YET_IN_TRAINER = frozenset({"student_topk_logprobs", "teacher_topk_logprobs", "teacher_pass_rate"})


def teacher_use(loss: LossConfig) -> TeacherUse:
    """What a run needs its teacher for (the one place of this rule):

    - "logprobs": the loss takes the teacher's per-token log-probs of the student's samples (``teacher_logprobs`` in
      :func:`rlad_megatron.loss.required_inputs`: rlad, kdrl), or its top-k (``teacher_topk_logprobs``);
    - "samples": offline distillation (sft) trains on the teacher's own samples: the rollout engine serves the
      teacher and receives no weight syncs;
    - "none": grpo.
    """
    if required_inputs(loss) & {"teacher_logprobs", "teacher_topk_logprobs"}:
        return "logprobs"
    return "samples" if loss.algorithm == "sft" else "none"


def validate_fp8_run(config: RunConfig) -> None:
    """Cross-section checks for FP8 in a whole run (no hardware needed); raises ``ConfigError``.

    - FP8 parameters need bfloat16 model parameters and the distributed optimizer (megatron-core keeps the
      high-precision main copy in the optimizer's shards and re-quantizes after each step).
    - FP8 rollouts need a bfloat16 engine and ``rollout.weight_load=vllm_reload``: vLLM quantizes weights once when
      they are loaded, so copying bf16 tensors into its FP8 parameters in place would be wrong; the layerwise reload
      runs vLLM's quantization again on every sync.
    """
    fp8 = config.fp8
    fp8.validate()
    if fp8.fp8_params:
        if config.model.params_dtype != "bfloat16":
            raise ConfigError(f"fp8.fp8_params=true needs model.params_dtype=bfloat16, "
                              f"got {config.model.params_dtype!r}")
        if not config.optim.use_distributed_optimizer:
            raise ConfigError("fp8.fp8_params=true needs optim.use_distributed_optimizer=true "
                              "(the FP8 weights' bf16 main copy lives in the distributed optimizer)")
    if fp8.rollout_fp8:
        if config.rollout.dtype != "bfloat16":
            raise ConfigError(f"fp8.rollout_fp8=true needs rollout.dtype=bfloat16 (vLLM quantizes a bf16 model "
                              f"to FP8), got {config.rollout.dtype!r}")
        if config.rollout.weight_load != "vllm_reload":
            raise ConfigError("fp8.rollout_fp8=true needs rollout.weight_load=vllm_reload: an FP8 engine must "
                              "re-quantize synced weights, which the in-place copy does not do")


def run_config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    return build_dataclass(RunConfig, data).validate()


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply dotted overrides."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder; give the YAML file itself")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start}); give a YAML file") from None
        except OSError as err:
            raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err)
            context = getattr(err, "context", None)
            raise ConfigError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        data = loaded or {}
    from rlad_megatron.config_paths import resolve_paths

    config = build_dataclass(RunConfig, apply_overrides(data, list(overrides or [])))
    return resolve_paths(config, Path(path).parent if path is not None else None, overrides or ()).validate()


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
