"""Context parallelism on GPUs: a tiny Qwen3 student's token log-probs at CP=2 (each rank holding its two
load-balanced chunks of every row, Transformer Engine's ring attention) equal the CP=1 log-probs of the same rows,
and so do the learner's (MegatronPolicy's forward step) log-probs and gradient norm. Needs two CUDA GPUs and
Transformer Engine (skipped otherwise; conftest skips it without CUDA)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.gpu

ROWS, LENGTH = 2, 64


def _logprobs(hf_dir: str, cp: int) -> torch.Tensor:
    from megatron.core import parallel_state as ps

    from rlad_megatron import parallel
    from rlad_megatron.learner.context_parallel import cp_split
    from rlad_megatron.logprobs import vocab_parallel_token_logprobs
    from rlad_megatron.models import load_hf_model

    parallel.initialize_model_parallel(1, 1, context_parallel=cp, seed=0)
    chunks, arch = load_hf_model(hf_dir, trainable=False)
    model = chunks[0]
    device = torch.device("cuda", torch.cuda.current_device())
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (ROWS, LENGTH + 1), generator=g)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]  # labels made on the whole row, then split like the inputs
    positions = torch.arange(LENGTH).expand(ROWS, -1)
    rank = ps.get_context_parallel_rank()
    inputs, labels, positions = (cp_split(t, cp, rank).to(device) for t in (inputs, labels, positions))
    with torch.no_grad():
        logits = model(inputs, positions, None)  # TE's causal attention, no explicit mask
        lp = vocab_parallel_token_logprobs(logits.float(), labels, vocab_size=arch.vocab_size)
    return lp.cpu()


@pytest.mark.skipif(torch.cuda.device_count() < 2 or importlib.util.find_spec("transformer_engine") is None,
                    reason="context parallelism needs 2 CUDA GPUs and Transformer Engine")
def test_cp2_logprobs_equal_cp1(tmp_path):
    from rlad_megatron.learner.context_parallel import cp_merge
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    hf_dir = str(make_tiny_hf_model(tmp_path / "qwen3", family="qwen3", num_layers=2, hidden_size=128,
                                    intermediate_size=256, num_heads=4, num_kv_heads=2, seed=0))
    (reference,) = run_distributed(_logprobs, 1, init_megatron=False, args=(hf_dir, 1))
    parts = run_distributed(_logprobs, 2, init_megatron=False, args=(hf_dir, 2))
    torch.testing.assert_close(cp_merge(parts), reference, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- the learner's forward step
def _policy_run(hf_dir: str, cp: int) -> dict:
    """The learner (MegatronPolicy, TE's attention) at CP=``cp``: token-budget log-probs, then one training step of
    a plain masked mean log-prob loss; CP rank 0 reports."""
    from megatron.core import parallel_state as ps

    from rlad_megatron import parallel
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.batching import MicroBatching
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.learner.sequences import SequenceBatch
    from rlad_megatron.models import load_hf_model

    parallel.initialize_model_parallel(1, 1, context_parallel=cp, seed=0)
    chunks, arch = load_hf_model(hf_dir, trainable=True, params_dtype=torch.bfloat16)
    chunks = [c.cuda() for c in chunks]
    wrapped, optimizer = build_student(chunks, OptimConfig(lr=1e-4, clip_grad=0.0))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    assert policy._uses_thd, "TE's attention must be in use"
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(40, 200, (6,), generator=g)
    width = int(lengths.max())
    tokens = torch.randint(1, arch.vocab_size, (6, width), generator=g)
    mask = torch.arange(width - 1).unsqueeze(0) < (lengths - 1).unsqueeze(1)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n:] = 0
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(6), rewards=torch.zeros(6),
                          correct=torch.zeros(6, dtype=torch.bool), engine_logprobs=torch.zeros(6, width - 1),
                          lengths=lengths)
    batching = MicroBatching(max_tokens=512)
    logprobs = policy.token_logprobs(batch, batching)
    total = float(mask.sum())

    def loss_fn(lp, entropy, mb):
        loss = -(lp.float() * mb.loss_mask).sum() / total
        return loss, {}

    step = policy.train_step(batch, loss_fn, batching)
    return {"cp_rank": ps.get_context_parallel_rank(), "logprobs": logprobs[mask].float().cpu(),
            "grad_norm": step.grad_norm}


@pytest.mark.skipif(torch.cuda.device_count() < 2 or importlib.util.find_spec("transformer_engine") is None,
                    reason="context parallelism needs 2 CUDA GPUs and Transformer Engine")
def test_policy_cp2_equals_cp1_with_te(tmp_path):
    """The forward step's CP path (rows padded and split, log-probs gathered back whole, the loss scale) with TE's
    ring attention: the CP=1 log-probs and gradient norm (bf16 tolerances)."""
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    hf_dir = str(make_tiny_hf_model(tmp_path / "qwen3", family="qwen3", num_layers=2, hidden_size=128,
                                    intermediate_size=256, num_heads=4, num_kv_heads=2, seed=0))
    (reference,) = run_distributed(_policy_run, 1, init_megatron=False, args=(hf_dir, 1))
    parts = run_distributed(_policy_run, 2, init_megatron=False, args=(hf_dir, 2))
    for part in parts:
        torch.testing.assert_close(part["logprobs"], reference["logprobs"], rtol=0, atol=3e-2)
        assert abs(part["grad_norm"] - reference["grad_norm"]) <= 2e-2 * reference["grad_norm"]
