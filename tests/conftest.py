"""Suite-wide settings: GPU tests skip without CUDA; Megatron's CPU patches never leak into the pytest process;
run_distributed's ranks fork from one pre-imported server per session (rlad_megatron/testing/fork_server.py),
stopped when the session ends; RLAD_DIST_FORK_SERVER=0 makes every rank a fresh process again."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    from rlad_megatron.testing import fork_server

    fork_server.enable()


def pytest_sessionfinish(session, exitstatus):
    from rlad_megatron.testing import fork_server

    fork_server.stop()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (run on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a keyword: "gpu" may name a folder
            item.add_marker(skip_gpu)
