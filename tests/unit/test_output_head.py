"""``trainer.fused_logprobs``: the setting's values, what "auto" and true do with a model the fused head does not
handle, and the hidden-states switch on a GPT-like module (the real GPTModel: tests/distributed, e2e layouts)."""
from __future__ import annotations

import types

import pytest
import torch

from rlad_megatron.config import ConfigError, TrainerConfig
from rlad_megatron.learner.output_head import hidden_states_out, use_fused_logprobs


class _FakeGPT(torch.nn.Module):
    """What the switch reads of megatron's GPTModel."""

    def __init__(self, *, tied: bool = False, mtp: int | None = None, post_process: bool = True) -> None:
        super().__init__()
        self.config = types.SimpleNamespace(mtp_num_layers=mtp, defer_embedding_wgrad_compute=False)
        self.post_process, self.parallel_output = post_process, True
        self.share_embeddings_and_output_weights = tied
        self.embedding_weight = torch.nn.Parameter(torch.zeros(4, 2))
        self.output_layer = types.SimpleNamespace(weight=torch.nn.Parameter(torch.ones(4, 2)), sequence_parallel=True)

    def shared_embedding_or_output_weight(self):
        return self.embedding_weight


class _Wrapper(torch.nn.Module):  # Megatron DDP keeps the model as .module
    def __init__(self, module, overlap: bool = False) -> None:
        super().__init__()
        self.module = module
        self.ddp_config = types.SimpleNamespace(overlap_grad_reduce=overlap)


def test_settings_resolve():
    plain, mtp = [_FakeGPT()], [_FakeGPT(mtp=1)]
    assert use_fused_logprobs("auto", plain) and use_fused_logprobs(True, plain)
    assert not use_fused_logprobs(False, plain)
    assert not use_fused_logprobs("auto", mtp)  # quietly today's path
    with pytest.raises(ValueError, match="trainer.fused_logprobs=true: multi-token prediction"):
        use_fused_logprobs(True, mtp)
    with pytest.raises(ValueError, match="choose auto, true or false"):
        use_fused_logprobs(1, plain)


def test_config_refuses_other_values():
    TrainerConfig(fused_logprobs="auto").validate()
    with pytest.raises(ConfigError, match="trainer.fused_logprobs='maybe'"):
        TrainerConfig(fused_logprobs="maybe").validate()


@pytest.mark.parametrize("tied", [False, True])
def test_switch_names_the_weight_and_restores_the_flag(tied):
    gpt = _FakeGPT(tied=tied)
    with hidden_states_out(_Wrapper(gpt)) as head:
        assert gpt.post_process is False
        assert head.weight is (gpt.embedding_weight if tied else gpt.output_layer.weight)
        assert head.sequence_parallel and head.main_grad
    assert gpt.post_process is True
    with hidden_states_out(_Wrapper(gpt, overlap=True)) as head:
        assert not head.main_grad  # DDP's overlapped reduction needs a .grad per parameter
    inner = _FakeGPT(post_process=False)  # a stage without an output layer: nothing changes
    with hidden_states_out(inner) as head:
        assert head is None and inner.post_process is False
