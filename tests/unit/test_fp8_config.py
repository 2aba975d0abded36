"""FP8 settings -> megatron-core TransformerConfig fields, vLLM FP8 rollouts, and the config-time checks (CPU)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rlad_megatron import fp8
from rlad_megatron.config import ConfigError, FP8Settings, RunConfig, run_config_from_dict
from rlad_megatron.fp8 import (
    FP8_RECIPES,
    check_fp8_available,
    check_run_hardware,
    transformer_config_fp8_kwargs,
    validate_fp8_run,
    validate_fp8_settings,
    vllm_fp8_kwargs,
)

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")


def test_disabled_maps_to_nothing():
    assert transformer_config_fp8_kwargs(FP8Settings()) == {}
    assert vllm_fp8_kwargs(FP8Settings()) == {}


def test_delayed_scaling_fields():
    kwargs = transformer_config_fp8_kwargs(FP8Settings(enabled=True, format="e4m3", recipe="delayed"),
                                           amax_history_len=16, amax_compute_algo="most_recent", margin=1)
    assert kwargs == {"fp8": "e4m3", "fp8_recipe": "delayed", "fp8_param": False, "fp8_wgrad": True,
                      "fp8_margin": 1, "fp8_amax_history_len": 16, "fp8_amax_compute_algo": "most_recent"}
    defaults = transformer_config_fp8_kwargs(FP8Settings(enabled=True))
    assert (defaults["fp8"], defaults["fp8_amax_history_len"], defaults["fp8_amax_compute_algo"]) == \
        ("hybrid", fp8.DELAYED_AMAX_HISTORY_LEN, fp8.DELAYED_AMAX_COMPUTE_ALGO)


@pytest.mark.parametrize("recipe", ["tensorwise", "mxfp8", "blockwise"])
def test_current_scaling_recipes_have_no_history(recipe):
    kwargs = transformer_config_fp8_kwargs(FP8Settings(enabled=True, recipe=recipe, fp8_params=True))
    assert kwargs == {"fp8": "hybrid", "fp8_recipe": recipe, "fp8_param": True, "fp8_wgrad": True}
    with pytest.raises(ConfigError, match=f"fp8.recipe='{recipe}' computes its scales .*='delayed' only"):
        transformer_config_fp8_kwargs(FP8Settings(enabled=True, recipe=recipe), amax_history_len=16)


@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_kwargs_are_accepted_by_megatron_transformer_config(recipe):
    """The names and values are megatron-core 0.16.1's own: its TransformerConfig keeps them as given."""
    from megatron.core.transformer import TransformerConfig

    kwargs = transformer_config_fp8_kwargs(FP8Settings(enabled=True, recipe=recipe, fp8_params=True))
    config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, **kwargs)
    for key, value in kwargs.items():
        assert getattr(config, key) == value, key


def test_delayed_scaling_argument_errors():
    on = FP8Settings(enabled=True)
    with pytest.raises(ConfigError, match="amax_history_len must be an integer >= 1, got 0"):
        transformer_config_fp8_kwargs(on, amax_history_len=0)
    with pytest.raises(ConfigError, match="amax_compute_algo='mean'"):
        transformer_config_fp8_kwargs(on, amax_compute_algo="mean")
    with pytest.raises(ConfigError, match="margin must be an integer >= 0, got -1"):
        transformer_config_fp8_kwargs(on, margin=-1)


@pytest.mark.parametrize("field,value,message", [
    ("format", "e5m2", r"fp8.format='e5m2': choose one of \['e4m3', 'hybrid'\]"),
    ("recipe", "nvfp4", r"fp8.recipe='nvfp4': choose one of \['delayed', 'tensorwise', 'mxfp8', 'blockwise'\]"),
    ("enabled", "yes", r"fp8.enabled must be true or false"),
])
def test_settings_errors_name_the_key(field, value, message):
    settings = dataclasses.replace(FP8Settings(enabled=True), **{field: value})
    with pytest.raises(ConfigError, match=message):
        validate_fp8_settings(settings)
    with pytest.raises(ConfigError, match=message):
        transformer_config_fp8_kwargs(settings)


def test_fp8_params_need_fp8():
    with pytest.raises(ConfigError, match="fp8.fp8_params=true .* needs fp8.enabled=true"):
        validate_fp8_settings(FP8Settings(enabled=False, fp8_params=True))


def _run(**fp8_fields) -> RunConfig:
    cfg = RunConfig()
    cfg.fp8 = FP8Settings(**fp8_fields)
    return cfg


def test_run_level_rules():
    cfg = _run(enabled=True, fp8_params=True)
    with pytest.raises(ConfigError, match="fp8.fp8_params=true needs model.params_dtype=bfloat16, got 'float32'"):
        validate_fp8_run(cfg)
    cfg.model.params_dtype = "bfloat16"
    cfg.optim.use_distributed_optimizer = False
    with pytest.raises(ConfigError, match="needs optim.use_distributed_optimizer=true"):
        validate_fp8_run(cfg)
    cfg.optim.use_distributed_optimizer = True
    validate_fp8_run(cfg)

    roll = _run(rollout_fp8=True)
    with pytest.raises(ConfigError, match="rollout_fp8=true needs rollout.dtype=bfloat16"):
        validate_fp8_run(roll)
    roll.rollout.dtype = "bfloat16"
    with pytest.raises(ConfigError, match="needs rollout.weight_load=vllm_reload"):
        validate_fp8_run(roll)
    roll.rollout.weight_load = "vllm_reload"
    validate_fp8_run(roll)


def test_vllm_rollout_kwargs():
    assert vllm_fp8_kwargs(FP8Settings(rollout_fp8=True)) == {"quantization": "fp8"}


@pytest.mark.slow
def test_vllm_knows_fp8_quantization():
    """The option we pass exists in the pinned vLLM (CPU build here; the CUDA build shares the Python side)."""
    import inspect

    import vllm
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    assert "fp8" in QUANTIZATION_METHODS
    assert "quantization" in inspect.signature(vllm.EngineArgs).parameters


@needs_no_cuda
def test_unavailable_on_cpu_names_cuda_and_transformer_engine(monkeypatch):
    monkeypatch.setattr(fp8.importlib.util, "find_spec", lambda name: None)  # as on a machine without TE
    with pytest.raises(ConfigError) as err:
        check_fp8_available(FP8Settings(enabled=True))
    text = str(err.value)
    assert "no CUDA GPU is visible" in text and "fp8.enabled=false" in text
    assert "transformer_engine is not installed" in text and "docker/Dockerfile" in text


@needs_no_cuda
def test_validation_is_pure_and_the_job_start_check_rejects_fp8_without_gpu():
    """A config asking for FP8 validates anywhere (a login node); the job-start check names the missing GPU."""
    config = run_config_from_dict({"model": {"student": "/s"}, "data": {"train_files": ["/t.jsonl"]},
                                   "loss": {"algorithm": "grpo"}, "fp8": {"enabled": True}})
    assert config.fp8.enabled
    with pytest.raises(ConfigError, match="fp8 is enabled but cannot run here: no CUDA GPU"):
        check_run_hardware(config)
    check_run_hardware(RunConfig())  # FP8 off: nothing to check


@needs_no_cuda
def test_rollout_fp8_alone_needs_only_cuda(monkeypatch):
    monkeypatch.setattr(fp8.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        check_fp8_available(FP8Settings(enabled=False, rollout_fp8=True))
    assert "no CUDA GPU" in str(err.value) and "transformer_engine" not in str(err.value)


def test_missing_transformer_engine_on_a_gpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(fp8.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as err:
        check_fp8_available(FP8Settings(enabled=True))
    assert "transformer_engine is not installed" in str(err.value) and "no CUDA GPU" not in str(err.value)


def test_gpu_generation_per_recipe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(fp8, "_transformer_engine_problem", lambda recipe: None)  # as if TE were importable
    check_fp8_available(FP8Settings(enabled=True, recipe="delayed"))
    with pytest.raises(ConfigError, match=r"'mxfp8' needs a GPU of compute capability >= 10.0 .*H100 is 9.0"):
        check_fp8_available(FP8Settings(enabled=True, recipe="mxfp8"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(ConfigError, match=r"'delayed' needs .* >= 8.9 .* Ada/Hopper"):
        check_fp8_available(FP8Settings(enabled=True, recipe="delayed"))
