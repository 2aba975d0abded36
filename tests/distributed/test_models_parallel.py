"""Megatron models loaded from HF checkpoints match transformers at TP=1, TP=2 and PP=2; HF -> Megatron (TP=2 /
PP=2) -> HF reproduces every tensor bit for bit and reloads in transformers.

Families: llama (untied), qwen2 (QKV bias), qwen3 (qk-norm), and a tied-embedding llama with llama3 RoPE scaling.
One multi-rank run per layout checks all families (runs cost seconds each on the 2-core box).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

SEQ = 24
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
MODELS = {
    "llama": dict(family="llama"),
    "qwen2": dict(family="qwen2", seed=1),
    "qwen3": dict(family="qwen3", seed=2),
    "llama_tied": dict(family="llama", seed=3, tie_word_embeddings=True, rope_theta=500000.0,
                       rope_scaling=LLAMA3_ROPE, num_layers=4),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    for name, kw in MODELS.items():
        make_tiny_hf_model(root / name, **kw)
    return root


def _hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model(tokens).logits


def _megatron_logits(chunks, tokens: torch.Tensor, vocab: int) -> torch.Tensor | None:
    """Full-vocab logits [B, T, vocab] on the last stage (None elsewhere); manual PP p2p of the hidden states."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    (model,) = chunks
    b, t = tokens.shape
    pos = torch.arange(t).unsqueeze(0).expand(b, -1)
    mask = torch.tril(torch.ones(1, 1, t, t)) < 0.5
    pp_group = ps.get_pipeline_model_parallel_group()
    pp_rank, pp_size = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
    with torch.no_grad():
        if pp_rank > 0:
            hidden = torch.empty(t, b, model.config.hidden_size)
            dist.recv(hidden, src=dist.get_global_rank(pp_group, pp_rank - 1), group=pp_group)
            model.set_input_tensor(hidden)
        out = model(tokens, pos, mask)
        if pp_rank < pp_size - 1:
            dist.send(out.contiguous(), dst=dist.get_global_rank(pp_group, pp_rank + 1), group=pp_group)
            return None
    tp_group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(out) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, out.contiguous(), group=tp_group)
    full = torch.cat(parts, dim=-1)
    assert full[..., vocab:].abs().max().item() == 0.0 if full.shape[-1] > vocab else True  # padded rows are zero
    return full[..., :vocab]


def _rank_check(root: str, export_root: str | None) -> dict:
    """On every rank: logits vs transformers per model; iter_hf_tensors (all ranks and dst_only) vs the file."""
    from safetensors.torch import load_file

    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import export_hf_checkpoint, iter_hf_tensors

    report = {}
    tokens = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(0))
    for name in MODELS:
        path = Path(root) / name
        chunks, arch = load_hf_model(path, trainable=False)
        logits = _megatron_logits(chunks, tokens, arch.vocab_size)
        entry = {}
        if logits is not None:
            entry["logit_diff"] = (logits - _hf_logits(path, tokens)).abs().max().item()
        original = load_file(path / "model.safetensors")
        got_all = dict(iter_hf_tensors(chunks, arch))
        entry["all_names_equal"] = sorted(got_all) == sorted(original)
        entry["all_bitwise"] = all(torch.equal(got_all[k], original[k]) for k in original if k in got_all)
        got_dst = dict(iter_hf_tensors(chunks, arch, dst_only=True))
        entry["dst_count"] = len(got_dst)
        entry["dst_bitwise"] = all(torch.equal(got_dst[k], original[k]) for k in got_dst)
        if export_root is not None:
            export_hf_checkpoint(chunks, arch, Path(export_root) / name, tokenizer_dir=path, max_shard_bytes=20_000)
        report[name] = entry
    return report


def _check_reports(reports: list[dict], n_tensors: dict[str, int], dst_rank: int = 0) -> None:
    for rank, report in enumerate(reports):
        for name, entry in report.items():
            if "logit_diff" in entry:
                assert entry["logit_diff"] < 1e-5, (rank, name, entry)
            assert entry["all_names_equal"] and entry["all_bitwise"], (rank, name, entry)
            assert entry["dst_bitwise"], (rank, name, entry)
            assert entry["dst_count"] == (n_tensors[name] if rank == dst_rank else 0), (rank, name, entry)
    assert any("logit_diff" in e for r in reports for e in r.values())


def _count(root: Path) -> dict[str, int]:
    from safetensors import safe_open

    return {n: len(safe_open(str(root / n / "model.safetensors"), "pt").keys()) for n in MODELS}


def test_tp1_logits_and_tensors(hf_models):
    reports = run_distributed(_rank_check, 1, args=(str(hf_models), None))
    _check_reports(reports, _count(hf_models))


@pytest.mark.distributed
def test_tp2_logits_and_round_trip(hf_models, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    reports = run_distributed(_rank_check, 2, tp=2, args=(str(hf_models), str(tmp_path)))
    _check_reports(reports, _count(hf_models))
    tokens = torch.randint(0, 100, (1, SEQ), generator=torch.Generator().manual_seed(1))
    for name in MODELS:
        export = tmp_path / name
        assert (export / "model.safetensors.index.json").exists() and (export / "tokenizer.json").exists()
        exported = {}
        for shard in export.glob("model-*.safetensors"):
            exported.update(load_file(shard))
        original = load_file(hf_models / name / "model.safetensors")
        assert sorted(exported) == sorted(original), name
        for key, tensor in original.items():
            assert torch.equal(exported[key], tensor), (name, key)
        reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(tokens).logits, _hf_logits(hf_models / name, tokens)), name


@pytest.mark.distributed
def test_pp2_logits_and_tensors(hf_models):
    reports = run_distributed(_rank_check, 2, pp=2, args=(str(hf_models), None))
    _check_reports(reports, _count(hf_models))
    assert all("logit_diff" in e for e in reports[1].values())  # the last stage compared every model
