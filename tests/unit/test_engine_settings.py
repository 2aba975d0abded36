"""The rollout engine's settings per machine (trainer/setup/engine_settings.py): executor, engine TP, CUDA graphs,
per-request seeds, the colocated engine's GPU memory share, and the GPU-only settings refused on CPU."""
from __future__ import annotations

import pytest

from rlad_megatron.config import ConfigError, RolloutConfig, RunConfig
from rlad_megatron.config.engine import VLLMEngineConfig
from rlad_megatron.trainer.setup import engine_settings as es

GIB = 1 << 30


def test_auto_executor_shards_on_gpus_only():
    auto = RolloutConfig()
    assert es.resolve_executor(auto, cuda=True) == "external_launcher"
    assert es.resolve_executor(auto, cuda=False) == "uni"
    assert es.resolve_executor(RolloutConfig(placement="disaggregated"), cuda=True) == "uni"
    assert es.resolve_executor(RolloutConfig(executor="external_launcher"), cuda=False) == "external_launcher"
    assert es.engine_tensor_parallel(auto, 4, cuda=True) == 4
    assert es.engine_tensor_parallel(auto, 4, cuda=False) == 1


def test_engine_config_from_run_config():
    c = RunConfig()
    c.model.student = "/m"
    c.parallel.tensor_parallel = 2
    c.rollout.sleep_level = 2
    gpu = es.engine_config(c, "/m", cuda=True, gpu_memory_utilization=0.4)
    assert (gpu.executor, gpu.tensor_parallel_size, gpu.enable_sleep_mode, gpu.gpu_memory_utilization) == (
        "external_launcher", 2, True, 0.4)
    cpu = es.engine_config(c, "/m", cuda=False)
    assert (cpu.executor, cpu.tensor_parallel_size, cpu.gpu_memory_utilization) == ("uni", 1, None)
    cpu.enable_sleep_mode = False
    cpu.validate()


def test_cuda_graphs_default_on_gpu_eager_on_cpu(monkeypatch):
    import torch

    cfg = VLLMEngineConfig(model="/m")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cfg.resolved_enforce_eager() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cfg.resolved_enforce_eager() is True
    assert VLLMEngineConfig(model="/m", enforce_eager=False).resolved_enforce_eager() is False


def test_seeds_per_request_only_when_asked():
    assert es.seed_requests(RolloutConfig(), cuda=False) is True
    assert es.seed_requests(RolloutConfig(), cuda=True) is False
    assert es.seed_requests(RolloutConfig(seed_requests=True), cuda=True) is True


def test_colocated_share_is_free_memory_minus_margin():
    # 141 GiB H200 with 60 GiB free (learner and teacher loaded): margin max(2 GiB, 8% of 141) = 11.28 GiB
    share = es.colocated_memory_fraction(60 * GIB, 141 * GIB, learner_shares_gpu=True)
    assert share == pytest.approx((60 - 0.08 * 141) / 141, abs=1e-4)
    assert share * 141 * GIB <= 60 * GIB  # vLLM's start-up check (free >= share x total) passes
    # alone on the GPU: vLLM's default 0.92, or less if the GPU is partly taken
    assert es.colocated_memory_fraction(140 * GIB, 141 * GIB, learner_shares_gpu=False) == 0.92
    assert es.colocated_memory_fraction(100 * GIB, 141 * GIB, learner_shares_gpu=False) < 100 / 141


def test_colocated_share_refuses_a_full_gpu():
    with pytest.raises(RuntimeError, match="would get .* of the GPU"):
        es.colocated_memory_fraction(8 * GIB, 80 * GIB, learner_shares_gpu=True)
    with pytest.raises(ValueError, match="inconsistent"):
        es.colocated_memory_fraction(90 * GIB, 80 * GIB, learner_shares_gpu=True)


def test_gpu_only_settings_refused_on_cpu_by_name():
    c = RunConfig()
    es.check_gpu_settings(c, cuda=False)  # the defaults are fine everywhere
    c.rollout.sleep_level, c.teacher.offload = 1, True
    with pytest.raises(ConfigError) as err:
        es.check_gpu_settings(c, cuda=False)
    assert "rollout.sleep_level=1" in str(err.value) and "teacher.offload" in str(err.value)
    es.check_gpu_settings(c, cuda=True)


@pytest.mark.parametrize("changes, message", [
    ({"executor": "ray"}, "rollout.executor"),
    ({"executor": "external_launcher", "placement": "disaggregated"}, "needs rollout.placement=colocated"),
    ({"gpu_memory_utilization": 1.0}, "gpu_memory_utilization"),
    ({"sleep_level": 3}, "sleep_level"),
    ({"sleep_level": 1, "placement": "disaggregated"}, "sleep_level"),
])
def test_rollout_settings_validated(changes, message):
    from rlad_megatron.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        RolloutConfig(**changes).validate()


def test_engine_config_rejects_tp_without_the_external_launcher():
    with pytest.raises(ValueError, match="needs VLLMEngineConfig.executor=external_launcher"):
        VLLMEngineConfig(model="/m", tensor_parallel_size=2).validate()


def test_teacher_offload_needs_a_gpu_device():
    import torch

    from rlad_megatron.teacher.megatron import HostOffload

    with pytest.raises(RuntimeError, match="teacher.offload moves the teacher between a GPU and host memory"):
        HostOffload([torch.nn.Linear(2, 2)], torch.device("cpu"))


def test_engine_refuses_gpu_only_settings_on_cpu(monkeypatch):
    import torch

    from rlad_megatron.rollout.vllm_engine import _check_gpu_only_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="rollout.sleep_level > 0 .* needs CUDA"):
        _check_gpu_only_settings(VLLMEngineConfig(model="/m", enable_sleep_mode=True))
    with pytest.raises(RuntimeError, match="gpu_memory_utilization"):
        _check_gpu_only_settings(VLLMEngineConfig(model="/m", gpu_memory_utilization=0.5))
    _check_gpu_only_settings(VLLMEngineConfig(model="/m"))


def test_uni_engine_off_local_rank_zero_is_refused_on_gpus(monkeypatch):
    """vLLM's one-process executor would load onto cuda:0 from any rank (issue 21): refused with the fix."""
    import torch

    from rlad_megatron.rollout.vllm_engine import _check_gpu_only_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3 would load onto cuda:0"):
        _check_gpu_only_settings(VLLMEngineConfig(model="/m"))
    _check_gpu_only_settings(VLLMEngineConfig(model="/m", executor="external_launcher"))


def test_sleep_level_two_needs_weight_syncs():
    c = RunConfig()
    c.loss.algorithm = "sft"  # the engine serves the teacher: nothing rewrites weights discarded in sleep
    c.rollout.sleep_level = 2
    with pytest.raises(ConfigError, match="use rollout.sleep_level=1"):
        es.check_gpu_settings(c, cuda=True)
    c.rollout.sleep_level = 1
    es.check_gpu_settings(c, cuda=True)


def test_planned_share_is_the_engine_terms_of_the_memory_plan():
    from rlad_megatron.memory_plan import engine_bytes, plan_memory
    from rlad_megatron.placement import ModelShape

    c = RunConfig()
    c.model.params_dtype = c.rollout.dtype = "bfloat16"
    c.rollout.kv_cache_mb = 8192
    student = ModelShape("student", 28, 16, 8, 1024, 3072, 128, vocab_size=151936)
    share = es.planned_memory_fraction(c, student, None, 8, 141 * GIB)
    plan = plan_memory(c, student=student, dp=8, gpu=141.0)
    assert share == pytest.approx(engine_bytes(plan) / (141 * GIB))
    assert 8 / 141 < share < 0.5  # at least the 8 GiB KV cache, far from the whole GPU
    c.rollout.kv_cache_mb = 200 * 1024  # a KV cache larger than the GPU: no plan share (the caller measures)
    assert es.planned_memory_fraction(c, student, None, 8, 141 * GIB) is None


def test_planned_share_gives_vllm_the_planned_kv_cache():
    """S3: by vLLM's own formula (rollout.vllm_memory.kv_cache_bytes, checked against vLLM's worker in
    test_vllm_memory.py) the planned share leaves the engine rollout.kv_cache_mb of KV cache when its runtime memory
    is the plan's estimate; weights + KV cache alone (the share before) would leave it without the runtime."""
    from rlad_megatron.memory_plan import plan_memory
    from rlad_megatron.placement import ModelShape
    from rlad_megatron.rollout.vllm_memory import EngineFootprint, kv_cache_bytes

    c = RunConfig()
    c.model.params_dtype = c.rollout.dtype = "bfloat16"
    c.rollout.kv_cache_mb = 8192
    student = ModelShape("student", 28, 16, 8, 1024, 3072, 128, vocab_size=151936)
    total = 141 * GIB
    share = es.planned_memory_fraction(c, student, None, 8, total)
    terms = {t.name: t.bytes for t in plan_memory(c, student=student, dp=8, gpu=141.0).terms}
    footprint = EngineFootprint(weights=terms["engine weights"], activation_peak=terms["engine runtime"])
    assert kv_cache_bytes(total, share, footprint) >= (8192 << 20) - 1
    assert kv_cache_bytes(total, share, footprint) < (8192 << 20) + 1e-6 * total
    weights_and_kv_only = (terms["engine weights"] + (8192 << 20)) / total
    assert kv_cache_bytes(total, weights_and_kv_only, footprint) < (8192 << 20) - terms["engine runtime"] + 1e-6 * total


def test_disaggregated_gpu_engine_is_sized_by_vllm_not_kv_cache_mb(monkeypatch):
    """S1: the engine process of a disaggregated run gets no kv_cache_memory_bytes on a GPU (vLLM's 0.92 of its
    own GPU applies), the configured size on CPU."""
    import torch

    from rlad_megatron.rollout.vllm_env import _kv_cache_bytes

    cfg = VLLMEngineConfig(model="/m", placement="disaggregated", kv_cache_bytes=256 << 20)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _kv_cache_bytes(cfg) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _kv_cache_bytes(cfg) == 256 << 20


def _kv_config(**rollout) -> RunConfig:
    c = RunConfig()
    c.data.max_prompt_tokens, c.rollout.max_new_tokens, c.rollout.kv_cache_mb = 256, 768, 1024
    for key, value in rollout.items():
        setattr(c.rollout, key, value)
    return c


def test_kv_cache_notices_say_what_sized_the_cache_and_when_kv_cache_mb_matters():
    per_token = 114688  # Qwen3-0.6B in bf16
    roomy = 256 * 1024 * 4  # tokens: every sequence of a step at full length, 4 times over

    def notices(c, cuda, tokens):
        return es.kv_cache_notices(c, cuda=cuda, kv_tokens=tokens, bytes_per_token=per_token, sequences_per_step=512)

    cpu = notices(_kv_config(), False, 100)
    assert [level for level, _ in cpu] == ["info"] and "rollout.kv_cache_mb=1024" in cpu[0][1]
    colocated = _kv_config()
    (info, text), = notices(colocated, True, roomy)
    assert "colocated share computed for rollout.kv_cache_mb=1024" in text
    small = notices(colocated, True, 2000)  # 219 MiB: below the 1024 MiB asked for, and a step needs more
    assert [level for level, _ in small] == ["info", "warning", "warning"]
    assert "smaller than rollout.kv_cache_mb=1024" in small[1][1]
    assert "262144 KV-cache tokens" in small[2][1] and "raise rollout.kv_cache_mb" in small[2][1]
    disaggregated = notices(_kv_config(placement="disaggregated"), True, 2000)
    assert "rollout.kv_cache_mb is not used" in disaggregated[0][1]
    assert len(disaggregated) == 2 and "larger GPU" in disaggregated[1][1]
    fixed = notices(_kv_config(gpu_memory_utilization=0.3), True, 2000)
    assert "gpu_memory_utilization=0.3" in fixed[0][1] and "raise rollout.gpu_memory_utilization" in fixed[1][1]
