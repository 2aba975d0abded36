"""The student's log-probs at a teacher's top-k ids through ``MegatronPolicy.train_step`` (the batch's
``teacher_topk_ids``; the loss function receives ``topk_logprobs=`` with autograd): with the fused head and with the
logits path, in fixed, token-budget and packed micro-batches, at TP=1 and at TP=2 + sequence parallelism, the values
and the gradients of every parameter equal a plain reference (the same weights, Megatron's full logits, a float32
log-softmax gathered at the ids, autograd)."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

K = 4
BATCH = 8


def _batch():
    """The tiny GPT's random batch (lengths 3..16, prompts of 1..3 tokens) with top-k ids per position (duplicates
    and the sampled token among them) and fixed loss weights; ``rewards`` holds each row's index."""
    from rlad_megatron.testing.tiny_gpt import VOCAB, random_sequence_batch

    batch = random_sequence_batch(BATCH, seed=11)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (*batch.loss_mask.shape, K), generator=g)
    ids[:, :, 1] = batch.tokens[:, 1:]  # the sampled token is one of them
    ids[:, ::3, 2] = ids[:, ::3, 0]  # a repeated id
    batch.teacher_topk_ids = ids.int()
    batch.rewards = torch.arange(BATCH, dtype=torch.float32)
    weights = torch.randn(*batch.loss_mask.shape, K + 1, generator=g, dtype=torch.float64)
    return batch, weights


def _loss(sampled: torch.Tensor, topk: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A fixed linear function of the sampled tokens' and the top-k log-probs at the loss mask's positions."""
    values = torch.cat([sampled.unsqueeze(-1), topk], dim=-1).double() * weights
    return values[mask].sum()


def _reference() -> dict:
    """One rank, no policy: Megatron's full logits of the batch, log-softmax, gathered; autograd."""
    from rlad_megatron.learner.micro_batch import causal_mask
    from rlad_megatron.testing.gather import gather_full
    from rlad_megatron.testing.tiny_gpt import tiny_config, tiny_gpt

    batch, weights = _batch()
    model = tiny_gpt(tiny_config(num_layers=2))
    width = batch.tokens.shape[1]
    logits = model(batch.tokens, torch.arange(width).unsqueeze(0).expand(BATCH, -1), causal_mask(width))
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    sampled = logp.gather(-1, batch.tokens[:, 1:].unsqueeze(-1)).squeeze(-1)
    topk = logp.gather(-1, batch.teacher_topk_ids.long())
    _loss(sampled, topk, batch.loss_mask, weights).backward()
    return {"topk": topk.detach()[batch.loss_mask], "grads": gather_full(model, grads=True)}


def _through_policy(sequence_parallel: bool, with_reference: bool) -> dict | None:
    from megatron.core import parallel_state as ps

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.testing.gather import gather_full
    from rlad_megatron.testing.tiny_gpt import VOCAB, tiny_config, tiny_gpt

    batch, weights = _batch()
    results: dict = {}
    for fused in (True, False):
        for name, batching in (("fixed", 2), ("budget", MicroBatching(max_tokens=24)),
                               ("packed", MicroBatching(max_tokens=24, packing=True))):
            seen = torch.zeros(*batch.loss_mask.shape, K)

            def loss_fn(logprobs, entropy, mb, topk_logprobs=None):
                assert topk_logprobs is not None and topk_logprobs.shape == (*logprobs.shape, K)
                rows = mb.rewards.long()
                width = logprobs.shape[1]
                seen[rows, :width] = torch.where(mb.loss_mask.unsqueeze(-1), topk_logprobs.detach(), 0.0)
                loss = _loss(logprobs, topk_logprobs, mb.loss_mask, weights[rows, :width])
                return loss.float(), {}

            config = tiny_config(num_layers=2, sequence_parallel=sequence_parallel)
            wrapped, optimizer = build_student([tiny_gpt(config)], OptimConfig(lr=1e-3, clip_grad=0.0))
            policy = MegatronPolicy(wrapped, VOCAB, optimizer=optimizer, fused_logprobs=fused)
            assert policy.train_step(batch, loss_fn, batching).applied
            results[(fused, name)] = {"topk": seen[batch.loss_mask], "grads": gather_full(wrapped[0], grads=True)}
    if ps.get_tensor_model_parallel_rank() != 0:
        return None
    return {"policy": results, "reference": _reference() if with_reference else None}


def _assert_matches(got: dict, ref: dict, what: str) -> None:
    torch.testing.assert_close(got["topk"], ref["topk"], rtol=1e-5, atol=1e-5, msg=f"{what}: top-k log-probs")
    assert set(got["grads"]) == set(ref["grads"]), what
    for name, grad in ref["grads"].items():
        scale = float(grad.abs().max())
        assert scale > 0, f"{name}: no gradient in the reference"
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=f"{what}: {name}")


@pytest.fixture(scope="module")
def tp1() -> dict:
    (out,) = run_distributed(_through_policy, 1, args=(False, True), timeout=300)
    return out


def test_student_topk_at_tp1_equals_the_plain_reference(tp1) -> None:
    ref = tp1["reference"]
    assert ref["topk"].numel() > 0 and torch.all(ref["topk"] < 0)
    for key, got in tp1["policy"].items():
        _assert_matches(got, ref, f"TP=1 fused={key[0]} {key[1]}")


def test_student_topk_at_tp2_sp_equals_the_plain_reference(tp1) -> None:
    outs = [r for r in run_distributed(_through_policy, 2, tp=2, args=(True, False), timeout=300) if r]
    assert len(outs) == 1
    for key, got in outs[0]["policy"].items():
        _assert_matches(got, tp1["reference"], f"TP=2+SP fused={key[0]} {key[1]}")
