"""``rollout``: the rollout engine and its samples. Twenty-five keys of five concerns, kept flat under ``rollout.``
(the keys users already write) and grouped by concern here and in ``rlad-megatron config --defaults``
(:data:`RolloutConfig.CONCERNS`): sampling, rewards of cut-off or slow responses, the engine, weight sync,
off-policy batches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from rlad_megatron.config.model import DType
from rlad_megatron.config.validators import ConfigError, at_least, choice, greater_than, in_range

Placement = Literal["colocated", "disaggregated"]
Executor = Literal["auto", "uni", "external_launcher"]
WeightLoad = Literal["inplace", "vllm_reload"]
Truncated = Literal["zero", "mask", "reward"]
Mode = Literal["sync", "async"]


@dataclass
class RolloutConfig:
    """The rollout engine and its samples."""

    CONCERNS: ClassVar[dict[str, str]] = {
        "group_size": "sampling: how each prompt's responses are drawn",
        "truncated": "rewards: what a cut-off or slow response earns",
        "placement": "engine: where the engine runs and what it may take",
        "weight_load": "weight sync: how the learner's weights reach the engine and are checked",
        "mode": "off-policy: batches sampled by older weights, and their correction",
    }
    """The first key of each concern -> its heading (the keys are declared concern by concern)."""

    # --- sampling: how each prompt's responses are drawn
    group_size: int = 8
    """G: responses sampled per prompt (the GRPO group)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (the paper: 1.0)."""
    top_p: float = 1.0
    """Nucleus-sampling threshold of the rollouts (1.0: the whole distribution)."""
    max_new_tokens: int = 64
    """Longest response; longer ones are cut and flagged as truncated."""
    seed_requests: bool | None = None
    """Seed every request from the run's seed, step and data-parallel rank (samples independent of the layout).
    None: on CPU yes (the test suite compares runs), on GPUs no (each replica's engine has its own seed, which fixes
    its stream per run; an engine sharded over tensor-parallel ranks seeds its requests itself so that its shards
    agree: rollout/seeds.py)."""

    # --- rewards: what a cut-off or slow response earns
    truncated: Truncated = "zero"
    """What a response cut off at max_new_tokens earns (rlad_megatron/trainer/step/truncation.py): "zero" (no credit:
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

    # --- engine: where the engine runs and what it may take
    placement: Placement = "colocated"
    """"colocated" (engine in the learner's process) or "disaggregated" (engine in its own process)."""
    executor: Executor = "auto"
    """How the colocated engine runs (docs/gpu.md): "external_launcher" (vLLM's SPMD executor inside the torchrun
    world: every rank holds one shard of an engine whose tensor parallelism is the learner's, on its own GPU),
    "uni" (one whole engine on the first rank of each model-parallel group, in a one-rank vLLM world: the CPU
    default) or "auto" (external_launcher on GPUs, uni on CPU)."""
    dtype: DType = "float32"
    """Engine dtype ("float32" or "bfloat16")."""
    kv_cache_mb: int = 256
    """vLLM KV-cache size in MiB. On CPU it is the cache. On a GPU it matters only for a colocated engine with
    rollout.gpu_memory_utilization unset: the engine's memory share is computed for this KV cache (plus its weights
    and runtime), so size it for your rollouts (256 MiB holds ~2,300 tokens of Qwen3-0.6B); otherwise vLLM sizes the
    cache from its share. The trainer logs the cache it got and warns when it is short (docs/gpu.md)."""
    gpu_memory_utilization: float | None = None
    """GPU only: the fraction of each GPU the engine may take (weights, runtime, KV cache: vLLM gives the KV cache
    what the rest leaves). None: vLLM's default (0.92) when the engine has the GPU to itself; with the learner on
    the same GPU, the smaller of the engine's share in the memory plan (sized for rollout.kv_cache_mb) and what is
    free at engine start minus a margin (trainer/setup/engine_settings.py). On CPU rollout.kv_cache_mb sizes the
    cache."""
    enforce_eager: bool | None = None
    """Run vLLM without CUDA graphs. None: CUDA graphs on GPUs (decode of small models is launch-bound without
    them), eager on CPU (required there)."""
    sleep_level: int = 0
    """GPU only (colocation): 0 keeps the engine's memory during training; 1 moves its weights to host memory and
    frees its KV cache while the learner trains; 2 frees both (the sync rewrites every weight). Weights are woken
    before the weight sync, the KV cache before generation."""
    engine_cpus: int = 0
    """CPU only, disaggregated placement: pin the engine process to this many cores (the last ones this job may
    use, one thread each) and give the learner ranks the other cores' worth of threads, so that they do not take
    each other's cores (0: no pinning, every process takes its default threads)."""

    # --- weight sync: how the learner's weights reach the engine and are checked
    weight_load: WeightLoad = "inplace"
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

    # --- off-policy: batches sampled by older weights, and their correction
    mode: Mode = "sync"
    """"sync": each step generates its batch, then trains on it. "async" (docs/async_rollouts.md): the engine
    process generates batch t+1 while the learner trains on batch t (one-step off-policy); needs
    rollout.placement=disaggregated (the engine in its own process)."""
    max_staleness: int = 1
    """async: the most weight versions a batch may lag behind the learner when it is trained on; older batches are
    dropped (regenerated with the current weights) and counted in rollout/stale_dropped. 0: the engine never runs
    ahead (exactly the synchronous run); >= 1: it generates one batch ahead (the engine serves one request at a
    time, so a batch lags at most one version)."""
    tis_cap: float | None = None
    """Truncated importance sampling: weight tokens by min(pi_learner_old / pi_engine, cap); None disables."""

    def validate(self) -> None:
        # sampling
        at_least("rollout.group_size", self.group_size, 1)
        greater_than("rollout.temperature", self.temperature, 0)
        in_range("rollout.top_p", self.top_p, 0, 1, low_open=True)
        at_least("rollout.max_new_tokens", self.max_new_tokens, 1)
        # rewards
        choice("rollout.truncated", self.truncated, Truncated)
        if not 0 <= self.overlong_cache <= self.max_new_tokens:
            raise ConfigError(f"rollout.overlong_cache must be in [0, rollout.max_new_tokens={self.max_new_tokens}], "
                              f"got {self.overlong_cache}")
        at_least("rollout.overlong_penalty", self.overlong_penalty, 0)
        in_range("rollout.reward_timeout_s", self.reward_timeout_s, 0, 3600, low_open=True)
        # engine
        choice("rollout.placement", self.placement, Placement)
        choice("rollout.executor", self.executor, Executor)
        if self.executor == "external_launcher" and self.placement != "colocated":
            raise ConfigError("rollout.executor=external_launcher shards the engine over the learner's ranks: it "
                              "needs rollout.placement=colocated")
        choice("rollout.dtype", self.dtype, DType)
        at_least("rollout.kv_cache_mb", self.kv_cache_mb, 1)
        if self.gpu_memory_utilization is not None:
            in_range("rollout.gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, low_open=True,
                     high_open=True)
        choice("rollout.sleep_level", self.sleep_level, (0, 1, 2))
        if self.sleep_level and self.placement != "colocated":
            raise ConfigError("rollout.sleep_level > 0 frees the engine's GPU memory for a learner on the same GPU: "
                              "it needs rollout.placement=colocated")
        at_least("rollout.engine_cpus", self.engine_cpus, 0)
        if self.engine_cpus and self.placement != "disaggregated":
            raise ConfigError("rollout.engine_cpus pins the engine process's cores: it needs "
                              "rollout.placement=disaggregated")
        # weight sync
        choice("rollout.weight_load", self.weight_load, WeightLoad)
        at_least("rollout.verify_every", self.verify_every, 0)
        for key in ("max_logprob_mismatch", "mean_logprob_mismatch"):
            if getattr(self, key) is not None:
                at_least(f"rollout.{key}", getattr(self, key), 0)
        # off-policy
        self._check_off_policy()

    def _check_off_policy(self) -> None:
        """``mode`` / ``max_staleness`` / ``tis_cap``: async needs the engine in its own process and the model's own
        distribution."""
        choice("rollout.mode", self.mode, Mode)
        at_least("rollout.max_staleness", self.max_staleness, 0)
        if self.tis_cap is not None:
            greater_than("rollout.tis_cap", self.tis_cap, 0)
        if self.mode == "async" and self.placement != "disaggregated":
            raise ConfigError("rollout.mode=async generates the next batch while the learner trains, which needs the "
                              "engine in a process of its own: set rollout.placement=disaggregated (on GPUs the "
                              "engines take GPUs after the learner's), or rollout.mode=sync")
        if self.mode == "async" and self.max_staleness >= 1 and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ConfigError(
                f"rollout.mode=async trains on batches sampled by the previous weights and takes the engine's "
                f"log-probs as the sampling policy's, but with temperature={self.temperature} / top_p={self.top_p} "
                "those are of the tempered/truncated distribution, not the model's: set rollout.temperature=1 and "
                "rollout.top_p=1, or rollout.max_staleness=0, or rollout.mode=sync")
