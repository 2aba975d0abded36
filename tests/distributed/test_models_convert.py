"""convert: HF -> Megatron dist checkpoint (TP=2) -> Megatron (PP=2) -> HF (one rank) reproduces every tensor bit
for bit; transformers reloads the result; the thin tools/ script runs in a fresh process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

REPO = Path(__file__).resolve().parents[2]


def _convert_chain(argvs: list[list[str]]) -> list[int]:
    """Several conversions one after the other in the same ranks (each sets up its own parallel layout; a rank's
    start-up is seconds, so one run does them all)."""
    from rlad_megatron.convert import main

    return [main(argv) for argv in argvs]


@pytest.mark.distributed
@pytest.mark.slow
def test_hf_tp2_pp2_hf_round_trip(tmp_path):
    hf = make_tiny_hf_model(tmp_path / "hf", "qwen3", num_layers=4, tie_word_embeddings=True, seed=4)
    argvs = [["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "tp2"), "--tp", "2"],
             ["mcore-to-mcore", "--ckpt", str(tmp_path / "tp2"), "--out", str(tmp_path / "pp2"), "--pp", "2"]]
    assert run_distributed(_convert_chain, 2, tp=2, args=(argvs,)) == [[0, 0]] * 2
    assert (tmp_path / "tp2" / "rlad_arch.json").exists() and (tmp_path / "tp2" / "tokenizer.json").exists()
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "mcore-to-hf", "--ckpt",
         str(tmp_path / "pp2"), "--out", str(tmp_path / "back")],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    original = load_file(hf / "model.safetensors")
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key
    from transformers import AutoModelForCausalLM

    tokens = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(hf).eval()(tokens).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()(tokens).logits
    assert torch.equal(a, b)


def test_refuses_unknown_checkpoint_and_direction(tmp_path):
    from rlad_megatron.convert import load_megatron_checkpoint, main

    with pytest.raises(FileNotFoundError, match="rlad_arch.json"):
        load_megatron_checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        main(["no-such-direction"])
