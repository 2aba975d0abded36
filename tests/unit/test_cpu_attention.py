"""What vLLM's CPU attention can serve (rlad_megatron/rollout/cpu_attention.py): the head sizes against the kernels
compiled into the installed vLLM, and the head size read from a config.json as vLLM reads it."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rlad_megatron.rollout.cpu_attention import CPU_ATTENTION_HEAD_DIMS, attention_head_dim, cpu_attention_problem


def test_the_head_sizes_are_those_the_installed_vllm_kernels_are_built_for() -> None:
    """Fails loudly when a vLLM release builds its CPU attention for other head sizes: update the tuple (and
    docs/vllm_on_cpu.md)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        pytest.skip("vLLM is not installed")
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed: cannot list the kernels of vLLM's CPU extension")
    found: dict[str, set[int]] = {}
    for lib in sorted(Path(spec.origin).parent.glob("_C*.so")):
        symbols = subprocess.run(["nm", "-C", str(lib)], capture_output=True, text=True).stdout
        for isa, head in re.findall(r"cpu_attention::AttentionImpl<\(cpu_attention::ISA\)(\d+), [\w:]+, (\d+)l?[,>]",
                                    symbols):
            found.setdefault(isa, set()).add(int(head))
    if not found:
        pytest.skip("vLLM's extension has no CPU attention kernels here (a GPU build)")
    # the x86 kernels: 1 = VEC (head sizes taken by multiples of 32), 2 = VEC16 (the other multiples of 16), and
    # 0 = AMX (bfloat16 on AMX CPUs, multiples of 32) where built; a head size runs when its kernel has it
    served = set().union(*(heads for isa, heads in found.items() if isa in ("1", "2")))
    assert tuple(sorted(served)) == CPU_ATTENTION_HEAD_DIMS
    assert found.get("0", {d for d in served if d % 32 == 0}) <= {d for d in served if d % 32 == 0}


def test_the_head_size_is_read_as_vllm_reads_it(tmp_path: Path) -> None:
    assert attention_head_dim({"hidden_size": 64, "num_attention_heads": 4}) == 16
    assert attention_head_dim({"hidden_size": 1024, "num_attention_heads": 16, "head_dim": 128}) == 128  # Qwen3
    assert attention_head_dim({"text_config": {"hidden_size": 96, "num_attention_heads": 2}}) == 48
    assert attention_head_dim({"hidden_size": 64, "num_attention_heads": 4, "kv_lora_rank": 512}) is None  # MLA
    assert attention_head_dim({}) is None
    for head_dim, ok in ((16, False), (8, False), (48, True), (64, True), (128, True)):
        folder = tmp_path / str(head_dim)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"hidden_size": 4 * head_dim, "num_attention_heads": 4}))
        problem = cpu_attention_problem(folder, "--model")
        assert (problem is None) == ok, problem
    assert cpu_attention_problem(tmp_path / "missing", "--model") is None  # the folder check says that
