"""Placement: learner TP/PP/DP, rollout engines and teacher on the allocation; errors that show the arithmetic."""
from __future__ import annotations

import dataclasses

import pytest

from rlad_megatron.config import ConfigError, RunConfig
from rlad_megatron.placement import ModelShape, PlacementError, check_model_shape, plan_placement


def _config(tp: int = 1, pp: int = 1, *, prompts: int = 256, rollout: str = "colocated", algorithm: str = "rlad",
            teacher_source: str = "megatron", fp8: bool = False) -> RunConfig:
    cfg = RunConfig()
    cfg.parallel.tensor_parallel, cfg.parallel.pipeline_parallel = tp, pp
    cfg.data.prompts_per_step = prompts
    cfg.rollout.placement = rollout
    cfg.loss.algorithm = algorithm
    cfg.model.teacher = "/models/teacher"
    cfg.teacher.source = teacher_source
    cfg.fp8.enabled = fp8
    return cfg


QWEN3_8B = ModelShape("Qwen3-8B", num_layers=36, num_heads=32, num_kv_heads=8, hidden_size=4096,
                      intermediate_size=12288)


def test_colocated_layout_counts():
    plan = plan_placement(_config(tp=2, pp=2), nodes=2, gpus_per_node=8, student=QWEN3_8B, teacher=QWEN3_8B)
    assert (plan.world_size, plan.learner_gpus, plan.dp, plan.num_engines) == (16, 16, 4, 4)
    assert (plan.rollout_tp, plan.teacher, plan.rollout_gpus) == (2, "megatron", 0)
    text = plan.describe()
    assert "TP=2 x PP=2 x DP=4" in text and "4 colocated vLLM engine(s)" in text and "Megatron" in text


def test_replica_larger_than_allocation_explains_arithmetic():
    with pytest.raises(PlacementError, match=r"8 learner GPUs cannot hold TP=4 x PP=4 = 16 GPUs per replica"):
        plan_placement(_config(tp=4, pp=4), nodes=1, gpus_per_node=8)


def test_fractional_data_parallel_is_an_error():
    with pytest.raises(PlacementError, match=r"12 learner GPUs .* TP=4 x PP=2 = 8-GPU replicas \(DP would be 1.5\)"):
        plan_placement(_config(tp=4, pp=2), nodes=3, gpus_per_node=4)


def test_tensor_parallel_must_stay_inside_a_node():
    with pytest.raises(PlacementError, match=r"TP=8 must fit inside one node .* 4 GPUs"):
        plan_placement(_config(tp=8), nodes=2, gpus_per_node=4)


def test_prompts_must_split_evenly_over_replicas():
    with pytest.raises(PlacementError, match=r"prompts_per_step=100 .* DP=8 .* 12.5"):
        plan_placement(_config(prompts=100), nodes=1, gpus_per_node=8)


@pytest.mark.parametrize("nodes,gpus", [(0, 8), (1, 0), (1, -2)])
def test_allocation_must_be_positive(nodes, gpus):
    with pytest.raises(PlacementError, match="must be an integer >= 1"):
        plan_placement(_config(), nodes=nodes, gpus_per_node=gpus)


def test_disaggregated_rollout_takes_its_own_gpus():
    # the trainer starts one engine process (TP=1, one GPU) per learner replica, on each node's last GPUs
    plan = plan_placement(_config(tp=2, rollout="disaggregated", prompts=64), nodes=2, gpus_per_node=6,
                          rollout_gpus=4)
    assert (plan.learner_gpus, plan.dp, plan.rollout_gpus, plan.num_engines, plan.rollout_tp) == (8, 4, 4, 4, 1)
    assert "4 vLLM engine(s) of TP=1 on 4 GPUs of their own" in plan.describe()
    # engines of TP=4 would be 2 for 4 replicas: not what the trainer starts; the error says what fits
    with pytest.raises(PlacementError, match=r"one rollout engine per learner replica.*DP=4 .*2 engine\(s\)"):
        plan_placement(_config(tp=2, rollout="disaggregated", prompts=64), nodes=2, gpus_per_node=8,
                       rollout_gpus=8, rollout_tp=4)
    with pytest.raises(PlacementError, match=r"--rollout-gpus 4\b"):
        plan_placement(_config(rollout="disaggregated", prompts=48), nodes=1, gpus_per_node=8, rollout_gpus=2)
    with pytest.raises(PlacementError, match=r"spread evenly over 2 nodes"):
        plan_placement(_config(rollout="disaggregated", prompts=64), nodes=2, gpus_per_node=8, rollout_gpus=3)


def test_disaggregated_rollout_errors():
    with pytest.raises(PlacementError, match=r"disaggregated needs GPUs of its own.*--rollout-gpus 4:"):
        plan_placement(_config(rollout="disaggregated"), nodes=1, gpus_per_node=8)
    with pytest.raises(PlacementError, match=r"6 rollout GPUs cannot hold whole engines of TP=4"):
        plan_placement(_config(rollout="disaggregated"), nodes=2, gpus_per_node=8, rollout_gpus=6, rollout_tp=4)
    with pytest.raises(PlacementError, match="leave no GPUs for the learner"):
        plan_placement(_config(rollout="disaggregated"), nodes=1, gpus_per_node=8, rollout_gpus=8)


def test_colocated_rollout_rejects_reserved_gpus_and_other_tp():
    with pytest.raises(PlacementError, match="colocated runs the engines on the learner's GPUs"):
        plan_placement(_config(), nodes=1, gpus_per_node=8, rollout_gpus=2)
    with pytest.raises(PlacementError, match=r"rollout TP=2 must equal parallel.tensor_parallel=1"):
        plan_placement(_config(), nodes=1, gpus_per_node=8, rollout_tp=2)


def test_teacher_kinds():
    assert plan_placement(_config(algorithm="grpo"), nodes=1, gpus_per_node=8).teacher == "none"
    plan = plan_placement(_config(teacher_source="vllm", prompts=48), nodes=1, gpus_per_node=8)
    assert (plan.teacher, plan.teacher_gpus, plan.dp) == ("vllm", 0, 8)
    assert "vLLM scorer in the learner's processes" in plan.describe()
    with pytest.raises(PlacementError, match=r"teacher_gpus=2 \(--teacher-gpus 2\) are a teacher pool's GPUs: set "
                                             r"teacher.placement=separate .*'megatron'.* or leave --teacher-gpus out"):
        plan_placement(_config(), nodes=1, gpus_per_node=8, teacher_gpus=2)


def test_teacher_pools_take_gpus_of_their_own():
    vllm = _config(teacher_source="vllm", prompts=48)
    vllm.teacher.placement = "separate"
    plan = plan_placement(vllm, nodes=1, gpus_per_node=8, teacher_gpus=4)
    assert (plan.teacher, plan.teacher_gpus, plan.dp) == ("vllm", 4, 4)
    assert "vLLM scorer in 4 engine processes on GPUs of their own" in plan.describe()
    # the engines are processes of their own, not torchrun ranks
    assert plan.ranks_per_node == 4 and "torchrun: 4 rank(s) per node" in plan.describe()
    assert plan_placement(vllm, nodes=1, gpus_per_node=8) == plan  # the default: one engine per learner replica
    # a wrong count names the launcher's flag and the count that fits (2 teacher GPUs would leave DP=6)
    with pytest.raises(PlacementError, match=r"2 teacher GPUs \(--teacher-gpus 2\) leave DP=6 replicas of TP=1 x "
                                             r"PP=1 but 2 teacher engine\(s\): give teacher_gpus=4 \(--teacher-gpus 4\)"):
        plan_placement(vllm, nodes=1, gpus_per_node=8, teacher_gpus=2)
    with pytest.raises(PlacementError, match=r"3 teacher GPUs \(--teacher-gpus 3\) cannot be spread evenly over 2"):
        plan_placement(vllm, nodes=2, gpus_per_node=4, teacher_gpus=3)
    with pytest.raises(PlacementError, match=r"7 GPUs - 0 rollout GPUs hold no whole number .* no engine GPU count "
                                             r"fits this allocation"):
        plan_placement(vllm, nodes=1, gpus_per_node=7)
    with pytest.raises(PlacementError, match=r"--teacher-gpus\): a GPU count must be >= 0"):
        plan_placement(vllm, nodes=1, gpus_per_node=8, teacher_gpus=-1)
    megatron = _config(prompts=64)
    megatron.teacher.placement, megatron.teacher.ranks, megatron.teacher.expert_parallel = "separate", 8, 8
    plan = plan_placement(megatron, nodes=2, gpus_per_node=8, teacher_gpus=8)
    assert (plan.teacher, plan.learner_gpus, plan.dp, plan.ranks_per_node) == ("megatron", 8, 8, 8)  # ranks
    assert "on 8 GPUs of its own (the job's last 8 ranks): TP=1 x PP=1, EP=8, 8 replica(s)" in plan.describe()
    assert "torchrun:" not in plan.describe()
    assert plan_placement(megatron, nodes=2, gpus_per_node=8) == plan  # the default: teacher.ranks
    with pytest.raises(PlacementError, match="teacher.ranks=8 teacher ranks need teacher_gpus=8 .*give "
                                             "--teacher-gpus 8 or leave --teacher-gpus out"):
        plan_placement(megatron, nodes=2, gpus_per_node=8, teacher_gpus=4)


def test_disaggregated_rollout_and_a_vllm_teacher_pool_share_out_the_engine_gpus():
    # 2 nodes x 6: DP=4 learner ranks, 4 rollout engines, 4 teacher engines; each node: 2 ranks + 2 + 2 engines
    both = _config(rollout="disaggregated", teacher_source="vllm", prompts=64)
    both.teacher.placement = "separate"
    plan = plan_placement(both, nodes=2, gpus_per_node=6, rollout_gpus=4)
    assert (plan.dp, plan.rollout_gpus, plan.teacher_gpus, plan.engine_gpus, plan.ranks_per_node) == (4, 4, 4, 8, 2)
    assert "torchrun: 2 rank(s) per node; the engines run in processes of their own on each node's last 4 GPU(s)" \
        in plan.describe()
    with pytest.raises(PlacementError, match=r"--rollout-gpus 4: one engine per learner replica, with "
                                             r"--teacher-gpus 4\)"):
        plan_placement(both, nodes=2, gpus_per_node=6)
    with pytest.raises(PlacementError, match=r"12 GPUs - 2 rollout - 4 teacher GPUs \(--teacher-gpus 4\) leave DP=6 .*give "
                                             r"rollout_gpus=4 and teacher_gpus=4 \(--rollout-gpus 4 --teacher-gpus 4\)"):
        plan_placement(both, nodes=2, gpus_per_node=6, rollout_gpus=2, teacher_gpus=4)
    # a rollout-only layout: its engines are not ranks either
    rollout = plan_placement(_config(rollout="disaggregated", prompts=64), nodes=2, gpus_per_node=4, rollout_gpus=4)
    assert (rollout.engine_gpus, rollout.ranks_per_node) == (4, 2)


def test_model_shape_checks_name_the_counts():
    shape = ModelShape("m", num_layers=28, num_heads=16, num_kv_heads=8, hidden_size=2048, intermediate_size=6144)
    check_model_shape(shape, tp=8, pp=4, role="student")  # fits
    with pytest.raises(PlacementError, match=r"student m: tensor parallel size 3 must divide num_attention_heads=16"):
        check_model_shape(shape, tp=3, pp=1, role="student")
    check_model_shape(dataclasses.replace(shape, num_heads=32), tp=16, pp=1, role="student")  # KV heads replicated
    with pytest.raises(PlacementError, match=r"size 12 and num_key_value_heads=8 must divide one another.*"
                                             r"\[1, 2, 4, 8, 16, 24, 48\]"):
        check_model_shape(dataclasses.replace(shape, num_heads=48), tp=12, pp=1, role="student")
    with pytest.raises(PlacementError, match=r"28 layers cannot be split into PP=3 .* \[1, 2, 4, 7, 14, 28\]"):
        check_model_shape(shape, tp=1, pp=3, role="teacher")
    odd = dataclasses.replace(shape, hidden_size=1000)
    check_model_shape(odd, tp=2, pp=1, role="student")  # fine without FP8
    with pytest.raises(PlacementError, match=r"FP8 GEMMs .* hidden_size=1000 .* 500"):
        check_model_shape(odd, tp=2, pp=1, role="student", fp8=True)


def test_plan_checks_teacher_shape_under_learner_layout():
    teacher = dataclasses.replace(QWEN3_8B, num_layers=30)
    with pytest.raises(PlacementError, match=r"teacher Qwen3-8B: 30 layers cannot be split into PP=4"):
        plan_placement(_config(tp=2, pp=4), nodes=1, gpus_per_node=8, student=QWEN3_8B, teacher=teacher)


def test_placement_error_is_a_config_error():
    assert issubclass(PlacementError, ConfigError)


def test_model_shape_from_hf_dir(tmp_path):
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    path = make_tiny_hf_model(tmp_path / "m", family="qwen3", num_layers=3, hidden_size=64, num_heads=4,
                              num_kv_heads=2, intermediate_size=96)
    shape = ModelShape.from_hf_dir(str(path), "tiny")
    assert shape == ModelShape("tiny", num_layers=3, num_heads=4, num_kv_heads=2, hidden_size=64,
                               intermediate_size=96, vocab_size=100, qk_norm=True)  # the last two: memory plan


def test_sequences_per_replica_must_split_into_micro_batches():
    cfg = _config(prompts=64)  # DP=8: 8 prompts x G=8 = 64 sequences per replica
    cfg.trainer.micro_batch_size = 24
    with pytest.raises(PlacementError, match=r"64 / 8 prompts x G=8 = 64 sequences .*micro_batch_size=24"):
        plan_placement(cfg, nodes=1, gpus_per_node=8)
    cfg.trainer.micro_batch_size, cfg.trainer.updates_per_batch = 16, 4
    assert plan_placement(cfg, nodes=1, gpus_per_node=8).dp == 8


def test_batch_layout_is_the_one_batch_arithmetic():
    from rlad_megatron.config import RunConfig
    from rlad_megatron.placement import batch_layout

    config = RunConfig()
    config.data.prompts_per_step, config.rollout.group_size = 32, 8
    config.trainer.micro_batch_size, config.trainer.updates_per_batch = 16, 2
    layout = batch_layout(config, 4)
    assert (layout.prompts_per_rank, layout.sequences_per_rank, layout.sequences_per_update) == (8, 64, 32)
    with pytest.raises(PlacementError, match=r"prompts_per_step=32 prompts cannot be shared evenly by DP=3"):
        batch_layout(config, 3)
    with pytest.raises(PlacementError, match=r"gets 32 / 16 = 2 prompts .* multiple of trainer.updates_per_batch=4"):
        config.trainer.updates_per_batch = 4
        batch_layout(config, 16)
    config.trainer.updates_per_batch, config.trainer.micro_batch_size = 2, 48
    with pytest.raises(PlacementError, match=r"64 sequences per step, which do not split .* dividing 32"):
        batch_layout(config, 4)


def test_uneven_pipeline_stages_in_placement():
    # Qwen3-8B's 36 layers on PP=8: refused evenly, accepted with 6 + 6x4 + 6 layers
    cfg = _config(tp=1, pp=8)
    with pytest.raises(PlacementError, match=r"36 layers cannot be split into PP=8 equal stages.*first_stage_layers"):
        plan_placement(cfg, nodes=1, gpus_per_node=8, student=QWEN3_8B)
    cfg.parallel.first_stage_layers = cfg.parallel.last_stage_layers = 6
    plan_placement(cfg, nodes=1, gpus_per_node=8, student=QWEN3_8B)
    cfg.parallel.last_stage_layers = 5
    with pytest.raises(PlacementError, match=r"student Qwen3-8B: .*valid choices are first=3 last=3"):
        plan_placement(cfg, nodes=1, gpus_per_node=8, student=QWEN3_8B)
