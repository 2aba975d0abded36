"""Fixtures shared by the GPU tests (they skip without CUDA: tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def nccl_world():
    """A one-rank NCCL world with TP=1, PP=1 on cuda:LOCAL_RANK, torn down after the module."""
    import torch.distributed as dist

    from rlad_megatron import parallel

    parallel.init_distributed("nccl")
    parallel.initialize_model_parallel(1, 1, seed=0)
    yield
    parallel.destroy_model_parallel()
    dist.destroy_process_group()
