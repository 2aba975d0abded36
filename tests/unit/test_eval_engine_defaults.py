"""The evaluation engine's defaults (issue 28: on a GPU ``eval`` started vLLM in fp32 with a 256 MiB KV cache):
the run's dtype, else the checkpoint's on a GPU; on a GPU the free memory for the KV cache; flags win."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rlad_megatron.eval.engine_defaults import default_engine_options, model_dtype
from rlad_megatron.trainer.setup.engine_settings import GIB, colocated_memory_fraction


@pytest.fixture()
def bf16_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16", "max_position_embeddings": 40960}))
    return str(tmp_path)


def test_gpu_defaults_fit_the_model_and_the_gpu(bf16_model) -> None:
    free, total = 75 * GIB, 80 * GIB
    got = default_engine_options(bf16_model, cuda=True, memory=(free, total))
    assert got == {"dtype": "bfloat16", "gpu_memory_utilization": colocated_memory_fraction(
        free, total, learner_shares_gpu=False)}
    assert 0.9 <= got["gpu_memory_utilization"] <= 0.92  # the engine alone on the GPU: vLLM's own share
    assert "kv_cache_bytes" not in got  # vLLM sizes the cache from the share, not a fixed 256 MiB


def test_the_run_config_and_the_flags_win(bf16_model) -> None:
    rollout = SimpleNamespace(dtype="float32", kv_cache_mb=1024)
    assert default_engine_options(bf16_model, cuda=True, rollout=rollout, memory=(70 * GIB, 80 * GIB))["dtype"] \
        == "float32"
    assert default_engine_options(bf16_model, cuda=False, rollout=rollout) == {"dtype": "float32",
                                                                               "kv_cache_bytes": 1024 << 20}
    given = {"kv_cache_bytes": 1 << 30, "dtype": "float32"}
    assert default_engine_options(bf16_model, cuda=True, memory=(70 * GIB, 80 * GIB), given=given) == given


def test_cpu_keeps_the_engine_defaults(bf16_model, tmp_path) -> None:
    assert default_engine_options(bf16_model, cuda=False) == {}
    assert model_dtype(bf16_model) == "bfloat16" and model_dtype(str(tmp_path / "none")) is None
