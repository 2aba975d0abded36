"""parallel.recompute / recompute_num_layers / context_parallel: the TransformerConfig fields, the start-up checks
and the placement arithmetic with context parallelism."""
from __future__ import annotations

import pytest

from rlad_megatron.config import RunConfig
from rlad_megatron.models.builder import recompute_fields
from rlad_megatron.models.hf_config import arch_from_hf_config, transformer_config_for
from rlad_megatron.placement import PlacementError, batch_layout, plan_placement
from rlad_megatron.testing.memory import tiny_arch_config


def test_recompute_fields():
    assert recompute_fields("none", 3) == {}
    assert recompute_fields("selective") == {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]}
    assert recompute_fields("full", 2) == {"recompute_granularity": "full", "recompute_method": "uniform",
                                           "recompute_num_layers": 2}
    with pytest.raises(ValueError, match="choose one of"):
        recompute_fields("everything")


def test_recompute_reaches_the_transformer_config():
    arch = arch_from_hf_config(tiny_arch_config(layers=4))
    config = transformer_config_for(arch, tp=1, pp=1, **recompute_fields("full", 2))
    assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == ("full",
                                                                                                   "uniform", 2)
    selective = transformer_config_for(arch, tp=1, pp=1, **recompute_fields("selective"))
    assert selective.recompute_granularity == "selective" and selective.recompute_modules == ["core_attn"]
    default = transformer_config_for(arch, tp=1, pp=1)
    assert default.recompute_granularity is None and default.context_parallel_size == 1


def test_recompute_chunks_must_divide_every_stage():
    arch = arch_from_hf_config(tiny_arch_config(layers=4))
    with pytest.raises(ValueError, match=r"recompute_num_layers=3 must divide .* \[4\].* choose among \[1, 2, 4\]"):
        transformer_config_for(arch, tp=1, pp=1, **recompute_fields("full", 3))


def test_context_parallel_sizes_are_checked_at_start():
    from rlad_megatron.models.builder import check_context_parallel

    check_context_parallel(2)  # runs with or without TE (models.cp_attention on the local spec)
    with pytest.raises(ValueError, match=r"parallel.context_parallel=0: must be >= 1"):
        check_context_parallel(0)


def _cp_config(cp: int, tp: int = 2) -> RunConfig:
    config = RunConfig()
    config.parallel.tensor_parallel, config.parallel.context_parallel = tp, cp
    config.data.prompts_per_step = 16
    config.model.teacher = "/models/teacher"
    return config


def test_placement_counts_context_parallel_ranks():
    plan = plan_placement(_cp_config(2), nodes=2, gpus_per_node=8)
    assert (plan.tp, plan.cp, plan.dp, plan.learner_gpus, plan.num_engines) == (2, 2, 4, 16, 4)
    assert "TP=2 x PP=1 x CP=2 x DP=4" in plan.describe()
    assert batch_layout(_cp_config(2), plan.dp).prompts_per_rank == 4  # CP splits sequences, not the batch
    with pytest.raises(PlacementError, match=r"8 learner GPUs are not a whole number of TP=2 x PP=1 x CP=3"):
        plan_placement(_cp_config(3), nodes=1, gpus_per_node=8)
    assert "CP" not in plan_placement(_cp_config(1), nodes=1, gpus_per_node=8).describe()


def test_trainer_refuses_only_unsupported_context_parallel_combinations(monkeypatch):
    from rlad_megatron.config import ConfigError
    from rlad_megatron.models import builder
    from rlad_megatron.trainer.setup.checks import check_context_parallel_supported as _check_context_parallel_supported

    config = _cp_config(2, tp=1)
    _check_context_parallel_supported(config)  # CP itself runs
    config.trainer.max_tokens_per_micro_batch, config.trainer.sequence_packing = 64, True
    monkeypatch.setattr(builder, "use_transformer_engine", lambda: False)
    _check_context_parallel_supported(config)  # packing without TE: a block-diagonal mask, split like any row
    monkeypatch.setattr(builder, "use_transformer_engine", lambda: True)
    with pytest.raises(ConfigError, match=r"context_parallel=2 with trainer.sequence_packing=true.*"
                                          r"set trainer.sequence_packing=false"):
        _check_context_parallel_supported(config)
