"""Disaggregated engines get GPUs of their own (rollout/factory.py): after the node's learner GPUs, one per engine,
in local-rank order of the model-parallel leaders; too few GPUs is a clear error. The pair group picks NCCL for
GPU tensors (gloo has no point-to-point for them)."""
from __future__ import annotations

import pytest

from rlad_megatron.rollout.factory import engine_gpu_index
from rlad_megatron.weight_sync.dist_transport import join_pair_group, pair_backend


def _node(host: str, ranks: int, tp: int) -> list[tuple[str, int, bool]]:
    return [(host, lr, lr % tp == 0) for lr in range(ranks)]


def test_engines_follow_the_learner_gpus():
    everyone = _node("a", 4, 2) + _node("b", 4, 2)  # 2 nodes x 8 GPUs, 4 learner ranks each, TP=2: leaders 0, 2
    assert engine_gpu_index(everyone, ("a", 0, True), 4, 8) == 4
    assert engine_gpu_index(everyone, ("a", 2, True), 4, 8) == 5
    assert engine_gpu_index(everyone, ("b", 2, True), 4, 8) == 5


def test_too_few_gpus_names_the_fix():
    everyone = _node("a", 6, 2)  # 6 learner ranks + 3 engines > 8 GPUs
    assert engine_gpu_index(everyone, ("a", 2, True), 6, 8) == 7
    with pytest.raises(RuntimeError, match="--nproc-per-node <= 5"):
        engine_gpu_index(everyone, ("a", 4, True), 6, 8)


def test_teacher_engines_follow_the_rollout_engines():
    """A vLLM teacher in engine processes of its own (teacher.placement=separate, issue 29's S2): one per learner
    replica, after the node's ranks and (slot 1) after the rollout engines, never on a learner's GPU."""
    everyone = _node("a", 4, 2)  # 4 ranks, TP=2: leaders 0 and 2
    assert engine_gpu_index(everyone, ("a", 0, True), 4, 8, slot=1) == 6
    assert engine_gpu_index(everyone, ("a", 2, True), 4, 8, slot=1) == 7
    assert engine_gpu_index(everyone, ("a", 2, True), 4, 8, slot=0) == 5  # a colocated rollout: right after
    with pytest.raises(RuntimeError, match="4 ranks and 4 engine processes but has 7 GPUs"):
        engine_gpu_index(everyone, ("a", 2, True), 4, 7, slot=1)


def test_pair_backend():
    assert pair_backend(True) == "nccl" and pair_backend(False) == "gloo"
    with pytest.raises(ValueError, match="backend='mpi'"):
        join_pair_group(None, 0, backend="mpi")
