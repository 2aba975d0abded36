"""Package-level guarantees: light import, the compat module's version guard and CUDA guard."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_does_not_pull_vllm_or_transformer_engine() -> None:
    code = (
        "import sys, rlad_megatron, rlad_megatron.loss, rlad_megatron.parallel;"
        "bad = [m for m in ('vllm', 'transformer_engine') if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing rlad_megatron imported {out}"


def test_compat_refuses_other_megatron_versions(monkeypatch) -> None:
    from megatron.core import package_info

    from rlad_megatron.compat import megatron_cpu

    monkeypatch.setattr(package_info, "__version__", "0.17.0")
    with pytest.raises(RuntimeError, match="0.16.1.*0.17.0"):
        megatron_cpu.check_megatron_version()


def test_compat_is_a_no_op_when_cuda_is_available(monkeypatch) -> None:
    from rlad_megatron.compat import megatron_cpu

    if megatron_cpu.is_applied():
        pytest.skip("patches already applied in this process")
    monkeypatch.setattr(megatron_cpu, "cuda_is_available", lambda: True)
    assert megatron_cpu.apply() is False
    assert not megatron_cpu.is_applied()


def test_compat_rejects_unknown_patch_names() -> None:
    from rlad_megatron.compat import megatron_cpu

    with pytest.raises(ValueError, match="no_such_patch"):
        megatron_cpu.apply(skip={"no_such_patch"})


def test_te_less_fallbacks_read_from_megatron_not_from_the_device(monkeypatch) -> None:
    """Which fallback fixes apply is read from the names megatron-core bound at import (read-only here: nothing is
    patched in the pytest process). This machine has neither Transformer Engine nor Apex: every fallback is taken."""
    import torch
    from megatron.core import optimizer as mcore_optimizer

    from rlad_megatron.compat import megatron_fallbacks

    assert megatron_fallbacks.fallback_paths() == dict.fromkeys(megatron_fallbacks.FALLBACKS, True)
    from megatron.core.optimizer import distrib_optimizer

    monkeypatch.setattr(mcore_optimizer, "Adam", type("FusedAdam", (torch.optim.Optimizer,), {}))
    assert megatron_fallbacks.fallback_paths()["distopt_checkpoint"]  # the distributed optimizer's switch is still off
    monkeypatch.setattr(distrib_optimizer, "HAVE_APEX_OR_TE", True)
    assert not megatron_fallbacks.fallback_paths()["distopt_checkpoint"]
    with pytest.raises(ValueError, match="no_such_fallback"):
        megatron_fallbacks.apply(skip={"no_such_fallback"})
