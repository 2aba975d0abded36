"""C1 on a GPU: where megatron-core runs without Transformer Engine and Apex (a plain PyTorch image, like the lent
H100/H200), the fallback fixes apply although CUDA is present, and a distributed-optimizer checkpoint (torch AdamW
state) saves and loads back with the learner's log-probs unchanged and the next step equal. Skipped without CUDA
(conftest); skipped where TE or Apex is installed (megatron-core then takes other paths)."""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    any(importlib.util.find_spec(m) is not None for m in ("transformer_engine", "apex")),
    reason="Transformer Engine or Apex is installed: megatron-core does not take the torch fallbacks here")]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("teless") / "qwen3", family="qwen3", num_layers=2,
                              hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, seed=0)


def _batch(vocab: int):
    from rlad_megatron.device import rank_device
    from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (5,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(3, vocab, (7,), generator=g).tolist() for _ in range(4)]
    tokens, mask, engine = pack_sequences(prompts, responses, [[-1.0] * 7] * 4, pad_id=0)
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
                          rewards=torch.zeros(4), correct=torch.zeros(4, dtype=torch.bool), engine_logprobs=engine)
    batch.teacher_logprobs = torch.full(mask.shape, -1.0)
    return SequenceBatch(**{f.name: None if getattr(batch, f.name) is None else getattr(batch, f.name).to(rank_device())
                            for f in dataclasses.fields(batch)})


def test_distributed_optimizer_checkpoint_round_trip_without_te(nccl_world, tiny_hf, tmp_path):
    from rlad_megatron.compat import megatron_cpu, megatron_fallbacks
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.checkpoint import load_checkpoint, save_checkpoint
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.loss import LossConfig, compute_policy_loss
    from rlad_megatron.loss.aggregation import Denominators
    from rlad_megatron.models import load_hf_model

    assert not megatron_cpu.is_applied()  # CUDA is here: no CPU patch
    assert megatron_fallbacks.applied() == frozenset(megatron_fallbacks.FALLBACKS)
    modules, arch = load_hf_model(tiny_hf, trainable=True, params_dtype=torch.bfloat16)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-3))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    batch = _batch(arch.vocab_size)
    denominators = Denominators(float(batch.loss_mask.sum()), 4.0)

    def loss_fn(logprobs, entropy, mb):
        return compute_policy_loss(LossConfig(algorithm="rlad"), logprobs=logprobs, mask=mb.loss_mask,
                                   denominators=denominators, old_logprobs=logprobs.detach(),
                                   teacher_logprobs=mb.teacher_logprobs, advantages=mb.advantages, correct=mb.correct)

    assert policy.train_step(batch, loss_fn, 2).applied
    before = policy.token_logprobs(batch, 2)
    ckpt = save_checkpoint(tmp_path / "ckpt", wrapped, optimizer)
    assert policy.train_step(batch, loss_fn, 2).applied  # the uninterrupted run's next step
    after_step = policy.token_logprobs(batch, 2)
    load_checkpoint(ckpt, wrapped, optimizer)
    assert torch.equal(policy.token_logprobs(batch, 2), before)
    assert policy.train_step(batch, loss_fn, 2).applied  # resumed: Adam moments and per-param steps restored
    # (one shared step tensor would have advanced once per parameter: a several-fold larger bias-corrected update)
    torch.testing.assert_close(policy.token_logprobs(batch, 2), after_step, atol=2e-3, rtol=0)
