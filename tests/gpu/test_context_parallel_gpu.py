"""Context parallelism on GPUs: a tiny Qwen3 student's token log-probs at CP=2 (each rank holding its two
load-balanced chunks of every row, Transformer Engine's ring attention) equal the CP=1 log-probs of the same rows.
Needs two CUDA GPUs and Transformer Engine (skipped otherwise; conftest skips it without CUDA)."""
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
