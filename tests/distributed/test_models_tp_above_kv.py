"""Tensor parallelism above the KV heads (megatron replicates each KV head over TP/num_kv_heads ranks): logits equal
transformers', every HF tensor comes back bit for bit (each KV head once), exports reload, and a training step's
gradients equal the single-rank ones."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.distributed
SEQ = 16
# one KV head (TP=2 and TP=4 replicate it), and 2 KV heads with 8 query heads (TP=4: 2 ranks per KV head)
MODELS = {
    "qwen2_kv1": dict(family="qwen2", num_heads=4, num_kv_heads=1, seed=21),
    "qwen3_kv2": dict(family="qwen3", num_heads=8, num_kv_heads=2, head_dim=8, seed=22),
}


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf_kv")
    for name, kw in MODELS.items():
        make_tiny_hf_model(root / name, **kw)
    return root


def _rank_check(root: str, export_root: str) -> dict:
    """Logits (gathered over TP), all HF tensors from iter_hf_tensors, an export, and the gradients of one
    backward pass (gathered to full HF tensors through the weight-sync path)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from safetensors.torch import load_file

    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import export_hf_checkpoint, iter_hf_tensors

    tokens = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, -1)
    mask = torch.tril(torch.ones(1, 1, SEQ, SEQ)) < 0.5
    report = {}
    for name in MODELS:
        path = Path(root) / name
        chunks, arch = load_hf_model(path, trainable=True)
        (model,) = chunks
        out = model(tokens, pos, mask)
        parts = [torch.empty_like(out) for _ in range(ps.get_tensor_model_parallel_world_size())]
        dist.all_gather(parts, out.detach().contiguous(), group=ps.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)[..., :arch.vocab_size]
        # a loss that depends on every vocab column: sum of squares of the (vocab-parallel) logits
        (out.float() ** 2).sum().backward()
        for pname, p in model.named_parameters():  # carry the grads through the same gather as the weights
            if "q_layernorm" in pname or "k_layernorm" in pname:
                # per-rank partial sums over the rank's heads: megatron's finalize_model_grads sums them over TP
                dist.all_reduce(p.grad, group=ps.get_tensor_model_parallel_group())
            p.data = p.grad.detach().clone()
        grads = dict(iter_hf_tensors(chunks, arch))
        reloaded, _ = load_hf_model(path, trainable=False)
        original = load_file(path / "model.safetensors")
        weights = dict(iter_hf_tensors(reloaded, arch))
        export_hf_checkpoint(reloaded, arch, Path(export_root) / name, tokenizer_dir=path)
        report[name] = {"logits": logits, "grads": grads,
                        "bitwise": sorted(weights) == sorted(original)
                        and all(torch.equal(weights[k], original[k]) for k in original)}
    return report


def _hf_reference(path: Path) -> tuple[torch.Tensor, dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).float()
    tokens = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(0))
    logits = model(tokens).logits
    (logits ** 2).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_above_kv_heads(hf_models, tmp_path, tp):
    from safetensors.torch import load_file

    reports = run_distributed(_rank_check, tp, tp=tp, args=(str(hf_models), str(tmp_path)), timeout=300)
    for name in MODELS:
        ref_logits, ref_grads = _hf_reference(hf_models / name)
        for rank, report in enumerate(reports):
            entry = report[name]
            assert entry["bitwise"], (tp, rank, name)
            assert (entry["logits"] - ref_logits).abs().max().item() < 1e-5, (tp, rank, name)
            assert sorted(entry["grads"]) == sorted(ref_grads), name
            for key, grad in ref_grads.items():
                scale = grad.abs().max().item() + 1e-12
                err = (entry["grads"][key] - grad).abs().max().item()
                assert err <= 1e-4 * scale, (tp, rank, name, key, err, scale)
        exported = load_file(tmp_path / name / "model.safetensors")
        original = load_file(hf_models / name / "model.safetensors")
        assert sorted(exported) == sorted(original)
        assert all(torch.equal(exported[k], original[k]) for k in original), name


def test_tp_choices_are_listed():
    from rlad_megatron.models.layout import check_tensor_parallel, valid_tensor_parallel_sizes

    class Arch:  # Qwen2.5-1.5B: 12 query heads, 2 KV heads
        num_heads, num_kv_heads, head_dim = 12, 2, 128

    assert valid_tensor_parallel_sizes(12, 2, 128) == [1, 2, 4]  # TP=4 replicates each KV head on 2 ranks
    check_tensor_parallel(Arch, 4)
    with pytest.raises(ValueError, match=r"num_attention_heads=12: choose tp among \[1, 2, 4\]"):
        check_tensor_parallel(Arch, 8)
    with pytest.raises(ValueError, match=r"divide the fused QKV rows 2048: choose tp among"):
        check_tensor_parallel(Arch, 6)
    assert valid_tensor_parallel_sizes(64, 8, 128) == [1, 2, 4, 8, 16, 32, 64]  # Qwen2.5-72B / Qwen3-32B
