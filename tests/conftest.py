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


@pytest.fixture
def tiny_disk(tmp_path_factory):
    """``tiny_disk(size)``: a real filesystem of ``size`` (a tmpfs, e.g. "256k") mounted for the test and unmounted
    after it, to fill up for real. Mounting needs root: elsewhere the test skips and says so."""
    import subprocess

    mounted = []

    def mount(size: str = "256k"):
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs root to mount a small tmpfs (the injected-ENOSPC unit tests of "
                        "rlad_megatron/atomic_write.py cover the same code without one)")
        where = tmp_path_factory.mktemp("tiny_disk")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
