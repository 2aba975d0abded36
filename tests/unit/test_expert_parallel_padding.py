"""The expert-parallel padding of one micro-batch (learner/expert_parallel.py): a micro-batch grown to a larger
``[rows, width]`` maps the model's outputs back to exactly the same per-sequence values, its real positions (what the
MoE router's load-balancing loss counts) are exactly the sequences' tokens, and its mask keeps every real position's
view. The collective part (agreeing on the shapes over the EP group) is tested against EP=1 in
tests/distributed/test_expert_parallel_learner.py."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.learner.batching import MicroBatching, build_micro_batches, filler_micro_batch
from rlad_megatron.learner.expert_parallel import pad_micro_batch, real_positions
from rlad_megatron.learner.sequences import SequenceBatch


def _batch(lengths: list[int]) -> SequenceBatch:
    n, width = len(lengths), max(lengths)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 50, (n, width), generator=g)
    for i, length in enumerate(lengths):
        tokens[i, length:] = 0
    return SequenceBatch(tokens=tokens, loss_mask=torch.ones(n, width - 1, dtype=torch.bool),
                         advantages=torch.zeros(n), rewards=torch.zeros(n), correct=torch.zeros(n, dtype=torch.bool),
                         engine_logprobs=torch.zeros(n, width - 1), lengths=torch.tensor(lengths))


def _fake_model_output(mb) -> torch.Tensor:
    """A per-position value that names its input token and position: [R, W-1]."""
    r, w = mb.tokens.shape
    return mb.tokens[:, :-1].float() * 1000 + torch.arange(w - 1).float()


@pytest.mark.parametrize("batching", [MicroBatching(micro_batch_size=2), MicroBatching(max_tokens=20),
                                      MicroBatching(max_tokens=20, packing=True)], ids=["fixed", "budget", "packed"])
def test_padding_keeps_every_sequence_value_and_real_position(batching):
    batch = _batch([9, 3, 7, 5])
    for mb in build_micro_batches(batch, batching):
        rows, width = mb.tokens.shape[0] + (0 if batching.packing else 2), mb.width + 5
        grown = pad_micro_batch(mb, rows, width)
        assert tuple(grown.tokens.shape) == (rows, width) and len(grown) == len(mb)
        got, want = grown.unpack(_fake_model_output(grown)), mb.unpack(_fake_model_output(mb))
        assert torch.equal(got[mb.valid], want[mb.valid])
        real, grown_real = real_positions(mb), real_positions(grown)
        assert int(grown_real.sum()) == int(real.sum()) == int(batch.lengths[mb.rows].sum())
        assert torch.equal(grown_real[: real.shape[0], : real.shape[1]], real)
        assert not grown.tokens[~grown_real].any()  # the padding is token 0 everywhere outside the sequences
        # a real position sees exactly what it saw before (True = masked); the added ones see nothing real later
        w = mb.width
        assert torch.equal(grown.attention_mask[..., :w, :w], mb.attention_mask)
        assert grown.attention_mask[..., :w, w:].all()


def test_real_positions_of_rows_and_fillers():
    batch = _batch([6, 2, 4])
    (mb,) = build_micro_batches(batch, MicroBatching(micro_batch_size=3))
    assert real_positions(mb).sum(dim=1).tolist() == [6, 2, 4]
    assert not real_positions(pad_micro_batch(filler_micro_batch(batch), 3, 8)).any()
    with pytest.raises(ValueError, match="does not fit"):
        pad_micro_batch(mb, 2, 8)


def test_expert_parallel_settings_are_checked(tmp_path):
    from rlad_megatron.config import ConfigError, ParallelConfig
    from rlad_megatron.trainer.setup.checks import check_expert_parallel
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    with pytest.raises(ConfigError, match="expert_tensor_parallel=2: only 1 is supported"):
        ParallelConfig(expert_parallel=2, expert_tensor_parallel=2).validate()
    with pytest.raises(ConfigError, match="expert_parallel must be >= 1"):
        ParallelConfig(expert_parallel=0).validate()
    dense = str(make_tiny_hf_model(tmp_path / "dense", family="qwen3"))
    moe = str(make_tiny_hf_model(tmp_path / "moe", family="qwen3_moe"))  # 4 experts per layer
    check_expert_parallel(2, {"model.student": dense, "model.teacher": moe})
    check_expert_parallel(1, {"model.student": dense})
    with pytest.raises(ConfigError, match="neither model.student nor model.teacher is a Mixture-of-Experts"):
        check_expert_parallel(2, {"model.student": dense, "model.teacher": dense})
    with pytest.raises(ConfigError, match="must divide the 4 experts per layer of model.teacher"):
        check_expert_parallel(3, {"model.student": dense, "model.teacher": moe})
