"""The memory plan's arithmetic against hand-computed values for known shapes (Qwen3-8B, Qwen3-30B-A3B)."""
from __future__ import annotations

import dataclasses

import pytest

from rlad_megatron.config import RunConfig
from rlad_megatron.memory_plan import (
    GIB, MemoryPlanError, device_params, gpu_memory_gib, layer_activation_bytes, logits_bytes, param_counts,
    plan_memory, training_activation_bytes,
)
from rlad_megatron.placement import ModelShape

QWEN3_8B = ModelShape("Qwen3-8B", 36, 32, 8, 4096, 12288, head_dim=128, vocab_size=151936, qk_norm=True)
QWEN3_32B = ModelShape("Qwen3-32B", 64, 64, 8, 5120, 25600, head_dim=128, vocab_size=151936, qk_norm=True)
QWEN3_30B_A3B = ModelShape("Qwen3-30B-A3B", 48, 32, 4, 2048, 6144, head_dim=128, vocab_size=151936,
                           num_experts=128, moe_top_k=8, moe_intermediate_size=768, qk_norm=True)


def test_qwen3_8b_parameter_count_by_hand():
    # per layer: q 4096x4096, k/v 4096x1024 each, o 4096x4096, q/k norms 128 each, MLP 3 x 4096 x 12288, 2 norms
    layer = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096
    assert layer == 192_946_432
    total = 36 * layer + 2 * 151936 * 4096 + 4096  # untied embedding and output layer, final norm
    assert param_counts(QWEN3_8B).total == total == 8_190_735_360  # "8.2B" on the model card


def test_qwen3_30b_a3b_parameter_count_by_hand():
    experts = 128 * 3 * 2048 * 768  # 128 SwiGLU experts of width 768
    dense = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 2 * 128 + 128 * 2048 + 2 * 2048  # attention, router, norms
    counts = param_counts(QWEN3_30B_A3B)
    assert (counts.layer_experts, counts.layer_dense) == (experts, dense)
    assert counts.total == 48 * (experts + dense) + 2 * 151936 * 2048 + 2048 == 30_532_122_624  # "30.5B"


def test_device_params_split_by_tp_pp_and_ep():
    counts = param_counts(QWEN3_8B, 152064)  # Megatron pads the vocabulary to a multiple of 128 x TP=4
    tp4 = device_params(QWEN3_8B, tp=4)
    assert tp4.total == (36 * counts.layer_dense + 2 * counts.embedding) // 4 + 4096
    pp2 = device_params(QWEN3_8B, tp=1, pp=2)  # 18 layers + the embedding (or + the output layer)
    counts = param_counts(QWEN3_8B, 151936)  # 151936 = 1187 x 128: no padding at TP=1
    assert pp2.total == 18 * counts.layer_dense + counts.embedding + 4096
    moe = param_counts(QWEN3_30B_A3B)
    ep1, ep8 = device_params(QWEN3_30B_A3B, tp=8), device_params(QWEN3_30B_A3B, tp=8, ep=8)
    assert ep1.experts == 48 * moe.layer_experts  # experts are not TP-split: every GPU holds all of them
    assert ep8.experts == 48 * moe.layer_experts // 8 and ep8.dense == ep1.dense


def test_layer_activations_by_hand():
    # Qwen3-8B, TP=4 with SP, bf16, 1000 tokens: 4h/4 + 2 q/4 + 2 kv/4 + (q + kv)/4 (QK-norm) + 3 f/4 per token
    per_token = 4 * 4096 // 4 + 2 * 4096 // 4 + 2 * 1024 // 4 + (4096 + 1024) // 4 + 3 * 12288 // 4
    got = layer_activation_bytes(QWEN3_8B, 1000, tp=4, sp=True, dtype_bytes=2, sequence_length=1000,
                                 fused_attention=True)
    assert got == {"layer": 1000 * per_token * 2, "scores": 0, "input": 1000 * 1024 * 2}
    # without SP the norm/linear inputs are replicated; an unfused attention keeps 2 x [b, heads/TP, s, s]
    unfused = layer_activation_bytes(QWEN3_8B, 2000, tp=4, sp=False, dtype_bytes=2, sequence_length=1000,
                                     fused_attention=False)
    assert unfused["scores"] == 2 * 2 * 8 * 1000 * 1000 * 2
    assert unfused["layer"] - unfused["scores"] == 2000 * (per_token + 3 * 4096) * 2


def test_layer_activations_under_context_parallelism_by_hand():
    # 2000 local tokens (2 rows of 1000 on this GPU, CP=2: rows of 2000): the unfused CP attention's scores span the
    # whole row and it keeps the other rank's K and V (2 x kv/TP per local token); TE's fused attention neither
    kw = dict(tp=4, sp=False, dtype_bytes=2, sequence_length=1000)
    plain = layer_activation_bytes(QWEN3_8B, 2000, fused_attention=False, **kw)
    cp2 = layer_activation_bytes(QWEN3_8B, 2000, fused_attention=False, context_parallel=2, **kw)
    assert cp2["scores"] == 2 * 2 * 8 * 1000 * 2000 * 2 == 2 * plain["scores"]
    assert cp2["layer"] - cp2["scores"] == plain["layer"] - plain["scores"] + 2000 * 2 * (1024 // 4) * 2
    assert layer_activation_bytes(QWEN3_8B, 2000, fused_attention=True, context_parallel=2, **kw) == \
        layer_activation_bytes(QWEN3_8B, 2000, fused_attention=True, **kw)


def test_recomputation_keeps_less():
    kw = dict(tp=1, sp=False, dtype_bytes=2, sequence_length=4096, fused_attention=False, layers=36,
              recompute_num_layers=1)
    none, selective, full = (training_activation_bytes(QWEN3_8B, 8192, recompute=r, **kw)
                             for r in ("none", "selective", "full"))
    one = layer_activation_bytes(QWEN3_8B, 8192, tp=1, sp=False, dtype_bytes=2, sequence_length=4096,
                                 fused_attention=False)
    assert none == 37 * one["layer"]  # 36 layers + one layer of backward temporaries
    # selective: 36 layers without their scores, one layer's scores rebuilt in its backward, the temporaries
    assert selective == 36 * (one["layer"] - one["scores"]) + one["scores"] + one["layer"]
    assert full == 36 * one["input"] + one["layer"]
    assert full < selective < none
    # 1F1B: the first of 4 stages (9 layers) keeps 4 micro-batches' activations, plus one layer's temporaries
    assert training_activation_bytes(QWEN3_8B, 8192, recompute="none", in_flight=4, **{**kw, "layers": 9}) == \
        (4 * 9 + 1) * one["layer"]


def test_logits_and_their_gradient():
    assert logits_bytes(151936, 1000, tp=4, dtype_bytes=2, backward=True, chunk_elements=1 << 24) == \
        1000 * 38016 * 2 * 2 + (1 << 24) * 4  # 152064 padded rows / 4; the bf16 logits and gradient, one fp32 chunk


def _math_8b(**trainer) -> RunConfig:
    from recipes import get_recipe

    config = get_recipe("math_qwen3_8b_base").config
    return dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, **trainer))


def test_the_issue_example_does_not_fit_and_names_what_would():
    # issue 15: math_qwen3_8b_base with micro-batch 16 of 2K prompt + 8K response, no recomputation
    config = _math_8b(micro_batch_size=16, max_tokens_per_micro_batch=None, max_tokens_per_forward_micro_batch=None)
    config = dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, max_new_tokens=8192),
                                 parallel=dataclasses.replace(config.parallel, recompute="none"))
    plan = plan_memory(config, student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu="h200")
    acts = plan.term("student activations").bytes
    assert 180 < acts / GIB < 220  # the issue's ~200 GB estimate (34 s b h / t per layer, 36 layers)
    assert not plan.fits
    with pytest.raises(MemoryPlanError) as err:
        plan.check()
    text = str(err.value)
    assert "student activations" in text and "trainer.max_tokens_per_micro_batch=" in text
    assert "139.8 GiB" in text
    # each suggestion, applied, fits
    budget = int(text.split("trainer.max_tokens_per_micro_batch=")[1].split(";")[0].split(" ")[0].rstrip("."))
    fixed = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, max_tokens_per_micro_batch=budget))
    assert plan_memory(fixed, student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu="h200").fits


def test_context_parallel_splits_the_tokens_and_shards_the_optimizer():
    config = _math_8b(max_tokens_per_micro_batch=65536)
    cp2 = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, context_parallel=2))
    one = plan_memory(config, student=QWEN3_8B, teacher=QWEN3_32B, dp=16)
    two = plan_memory(cp2, student=QWEN3_8B, teacher=QWEN3_32B, dp=8)
    assert two.term("student activations").bytes * 2 == pytest.approx(one.term("student activations").bytes,
                                                                      rel=1e-3)
    assert two.term("student optimizer (Adam)").bytes == one.term("student optimizer (Adam)").bytes


def test_distributed_optimizer_shards_adam_over_data_parallel():
    config = _math_8b()
    p = device_params(QWEN3_8B, tp=4).total
    assert plan_memory(config, student=QWEN3_8B, teacher=QWEN3_32B, dp=16).term(
        "student optimizer (Adam)").bytes == p * 12 // 16
    plain = dataclasses.replace(config, optim=dataclasses.replace(config.optim, use_distributed_optimizer=False))
    assert plan_memory(plain, student=QWEN3_8B, teacher=QWEN3_32B, dp=16).term(
        "student optimizer (Adam)").bytes == p * 12


def test_gpu_names_and_sizes():
    assert gpu_memory_gib("h100") == (79.6, "H100") and gpu_memory_gib("H200")[0] == 139.8
    assert gpu_memory_gib(40)[0] == 40.0 and gpu_memory_gib("24")[0] == 24.0 and gpu_memory_gib(None)[0] is None
    with pytest.raises(ValueError, match="give one of"):
        gpu_memory_gib("a100x")


def test_unknown_vocab_is_refused():
    with pytest.raises(ValueError, match="no vocab_size"):
        param_counts(dataclasses.replace(QWEN3_8B, vocab_size=0))


def test_engine_memory_utilization_is_the_engine_share_of_the_gpu():
    from rlad_megatron.memory_plan import engine_bytes, engine_memory_utilization

    plan = plan_memory(_math_8b(), student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu="h200")
    weights = device_params(QWEN3_8B, tp=4).total * 2  # the whole student at the engine's TP=4, bf16
    runtime = 16384 * (3 * 12288 // 4 + 4 * 4096) * 2 + 256 * 151936 * 16 + GIB  # rollout.vllm_memory's estimate
    assert engine_bytes(plan) == weights + (32768 << 20) + runtime
    assert engine_memory_utilization(plan) == pytest.approx(engine_bytes(plan) / (139.8 * GIB))
    assert engine_memory_utilization(plan, total_gib=79.6) == pytest.approx(engine_bytes(plan) / (79.6 * GIB))
    with pytest.raises(ValueError, match="lower rollout.kv_cache_mb"):
        engine_memory_utilization(plan, total_gib=20)


def test_engine_sleep_and_teacher_offload_leave_the_resident_set():
    # issue 21's phase moves: a sleeping engine holds memory only while it generates; an offloaded teacher only
    # while it scores. Both leave "resident" for their own phase, which lowers the training-phase peak.
    base = _math_8b()
    base = dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, sleep_level=0),
                               teacher=dataclasses.replace(base.teacher, offload=False))
    awake = plan_memory(base, student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu="h200")
    assert awake.term("teacher weights").phase == "resident"
    moved = dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, sleep_level=1),
                                teacher=dataclasses.replace(base.teacher, offload=True))
    plan = plan_memory(moved, student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu="h200")
    engine = {"engine weights", "engine KV cache", "engine runtime"}
    assert {t.phase for t in plan.terms if t.name in engine} == {"generate"}
    assert {t.phase for t in awake.terms if t.name in engine} == {"resident"}
    assert plan.term("teacher weights").phase == "score"
    moved_out = sum(t.bytes for t in plan.terms if t.name in engine | {"teacher weights"})
    assert awake.resident_bytes - plan.resident_bytes == moved_out
    assert plan.peak_bytes == plan.resident_bytes + max(plan.phase_bytes(p) for p in ("train", "score", "generate"))
    assert plan.peak_bytes < awake.peak_bytes
    assert "generation (engine awake)" in plan.describe()


def test_engine_sleep_is_suggested_when_it_is_what_fits():
    # a GPU between the sleeping and the awake peak: the advice names rollout.sleep_level=1
    base = _math_8b()
    base = dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, sleep_level=0))
    awake = plan_memory(base, student=QWEN3_8B, teacher=QWEN3_32B, dp=16)
    asleep = plan_memory(dataclasses.replace(base, rollout=dataclasses.replace(base.rollout, sleep_level=1)),
                         student=QWEN3_8B, teacher=QWEN3_32B, dp=16)
    between = (awake.peak_gib + asleep.peak_gib) / 2
    plan = plan_memory(base, student=QWEN3_8B, teacher=QWEN3_32B, dp=16, gpu=between)
    assert not plan.fits and "rollout.sleep_level=1" in plan.suggestions


def test_topk_signal_and_the_students_topk_targets_are_counted():
    """loss.topk_kl: the teacher's top-k [tokens, k] x (int32 id + fp32 log-prob) for the rank's whole step, and the
    student's k extra targets per position of a training micro-batch; nothing without a top-k term."""
    config = _math_8b(max_tokens_per_micro_batch=65536)
    plain = plan_memory(config, student=QWEN3_8B, teacher=QWEN3_32B, dp=16)
    names = [t.name for t in plain.terms]
    assert "teacher top-k signal" not in names and "student top-k log-probs" not in names
    loss = dataclasses.replace(config.loss, topk_kl="forward", topk_beta=0.1, topk_k=64)
    topk = plan_memory(dataclasses.replace(config, loss=loss), student=QWEN3_8B, teacher=QWEN3_32B, dp=16)
    longest = config.data.max_prompt_tokens + config.rollout.max_new_tokens
    step_tokens = -(-config.data.prompts_per_step * config.rollout.group_size // 16) * longest
    signal = topk.term("teacher top-k signal")
    assert signal.bytes == step_tokens * 64 * 8 and signal.phase == "resident"
    student = topk.term("student top-k log-probs")
    assert student.bytes == 65536 * 64 * 32 and student.phase == "train"
    assert topk.peak_bytes == plain.peak_bytes + signal.bytes + student.bytes  # training is the peak phase
