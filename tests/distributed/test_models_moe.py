"""Qwen3-MoE and Qwen2-MoE (shared expert) teachers from HF checkpoints: token log-probs at EP=1 and EP=2 equal
transformers' (fp32, 1e-4), every HF tensor comes back bit for bit through the EP-aware gather, and HF -> Megatron
(EP=2) -> Megatron (TP=2, EP=1) -> HF is bit-exact."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.distributed
MODELS = {
    "qwen3_moe": dict(family="qwen3_moe", num_layers=2, seed=41),
    "qwen2_moe": dict(family="qwen2_moe", num_layers=2, seed=42),
}
SEQS = [[1, 10, 11, 12, 13, 14, 15, 16, 17, 18], [1, 20, 21, 22, 23, 24, 25, 26]]
PROMPT_LENS = [3, 2]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf_moe")
    for name, kw in MODELS.items():
        make_tiny_hf_model(root / name, **kw)
    return root


def _hf_token_logprobs(path: Path) -> list[list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for seq, p in zip(SEQS, PROMPT_LENS):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), dim=-1)
            out.append([logp[t - 1, seq[t]].item() for t in range(p, len(seq))])
    return out


def _rank_teacher(root: str) -> dict:
    from safetensors.torch import load_file

    from rlad_megatron.models import load_teacher
    from rlad_megatron.models.hf_export import iter_hf_tensors
    from rlad_megatron.weight_sync.megatron_probe import megatron_token_logprobs

    report = {}
    for name in MODELS:
        path = Path(root) / name
        chunks, arch = load_teacher(path)
        lps = megatron_token_logprobs(chunks, arch.vocab_size)(SEQS, PROMPT_LENS)
        original = load_file(path / "model.safetensors")
        got = dict(iter_hf_tensors(chunks, arch))
        dst = dict(iter_hf_tensors(chunks, arch, dst_only=True))
        report[name] = {"logprobs": lps, "local_experts": len(chunks[0].decoder.layers[0].mlp.local_expert_indices),
                        "all_bitwise": sorted(got) == sorted(original)
                        and all(torch.equal(got[k], original[k]) for k in original),
                        "dst": len(dst), "dst_bitwise": all(torch.equal(dst[k], original[k]) for k in dst)}
    return report


@pytest.mark.parametrize("ep", [1, 2])
def test_moe_teacher_logprobs_and_tensors(hf_models, ep):
    reports = run_distributed(_rank_teacher, ep, ep=ep, args=(str(hf_models),), timeout=300)
    for name in MODELS:
        ref = _hf_token_logprobs(hf_models / name)
        for rank, report in enumerate(reports):
            entry = report[name]
            assert entry["local_experts"] == 4 // ep
            assert entry["all_bitwise"] and entry["dst_bitwise"], (name, rank)
            assert entry["dst"] > 0  # every replica's first rank yields (EP spans the data-parallel ranks)
            err = max(abs(a - b) for x, y in zip(entry["logprobs"], ref) for a, b in zip(x, y))
            assert err < 1e-4, (name, ep, rank, err)


def _convert(argv: list[str]) -> int:
    from rlad_megatron.convert import main

    return main(argv)


@pytest.mark.slow
def test_moe_round_trip_ep2_to_tp2_to_hf(hf_models, tmp_path):
    from safetensors.torch import load_file

    for name in MODELS:
        hf, ep2, tp2, back = hf_models / name, tmp_path / f"{name}_ep2", tmp_path / f"{name}_tp2", tmp_path / name
        run_distributed(_convert, 2, ep=2, args=(["hf-to-mcore", "--hf", str(hf), "--out", str(ep2), "--ep", "2"],))
        run_distributed(_convert, 2, tp=2, args=(["mcore-to-mcore", "--ckpt", str(ep2), "--out", str(tp2),
                                                  "--tp", "2"],))
        run_distributed(_convert, 2, ep=2, args=(["mcore-to-hf", "--ckpt", str(tp2), "--out", str(back),
                                                  "--ep", "2"],))
        original, exported = load_file(hf / "model.safetensors"), load_file(back / "model.safetensors")
        assert sorted(exported) == sorted(original), name
        for key, tensor in original.items():
            assert torch.equal(exported[key], tensor), (name, key)
