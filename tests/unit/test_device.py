"""The device policy (rlad_megatron/device.py): which device a rank owns, where collective tensors live, and that
the rank's current CUDA device is checked after engine calls. CUDA is faked where the CPU cannot show a choice."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from rlad_megatron import device


@pytest.fixture
def fake_gpus(monkeypatch):
    """A node with 4 GPUs and no process group (only the queries rank_device makes are faked)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(device, "_world_backend", lambda: None)


def test_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device.rank_device() == torch.device("cpu")
    assert device.set_rank_device() == torch.device("cpu")
    device.check_current_device("a test")  # nothing to check on CPU


def test_local_rank_picks_the_gpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device.rank_device() == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert device.rank_device() == torch.device("cuda", 0)


def test_more_ranks_than_gpus_is_a_clear_error(fake_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=4 but this node has 4 visible GPU"):
        device.rank_device()


@pytest.mark.parametrize("value", ["x", "-1"])
def test_bad_local_rank(value, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", value)
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        device.local_rank()


def test_gloo_job_on_a_gpu_node_stays_on_cpu(fake_gpus, monkeypatch):
    """A gloo world (the CPU tests, the demo) computes on the CPU even where CUDA exists; an NCCL one on the GPU."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(device, "_world_backend", lambda: "gloo")
    assert device.rank_device() == torch.device("cpu")
    monkeypatch.setattr(device, "_world_backend", lambda: "nccl")
    assert device.rank_device() == torch.device("cuda", 1)


def test_collectives_follow_the_group_backend(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert device.collective_device(object()) == torch.device("cpu")
    t = torch.ones(2)
    assert device.for_collective(t, object()) is t
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert device.collective_device(object()) == torch.device("cuda", 2)


def test_moved_current_device_is_caught(fake_gpus, monkeypatch):
    """What engine_call_guard asserts after every engine call: the rank still sits on its own GPU."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match="current CUDA device is cuda:0, but this rank owns cuda:1"):
        device.check_current_device("VLLMEngine.generate")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    device.check_current_device("VLLMEngine.generate")


def test_guard_restores_the_device_an_engine_moved(fake_gpus, monkeypatch):
    """vLLM's worker calls torch.cuda.set_device(cuda:0) while starting; the guard puts the rank back."""
    current = {"index": 2}
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.__setitem__("index", torch.device(d).index
                                                                               if not isinstance(d, int) else d))
    with device.engine_call_guard("engine start"):
        torch.cuda.set_device(torch.device("cuda", 0))  # what the engine does
    assert current["index"] == 2
