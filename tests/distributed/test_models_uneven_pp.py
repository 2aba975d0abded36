"""Uneven pipeline stages (first/last stage layer counts): logits equal transformers' at PP=2 with 1+2 and 2+1
layers, and HF -> Megatron (TP=2 above the single KV head) -> Megatron (PP=2, first stage 1 layer) -> HF (PP=2,
last stage 1 layer) reproduces every tensor bit for bit. Bad layouts name the valid choices."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

SEQ = 16


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    # 3 layers (PP=2 cannot split them evenly), 4 query heads sharing 1 KV head, QKV bias
    return make_tiny_hf_model(tmp_path_factory.mktemp("hf") / "qwen2", family="qwen2", num_layers=3,
                              num_heads=4, num_kv_heads=1, seed=31)


def _pp_logits(hf_dir: str, first: int | None, last: int | None) -> dict:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron.models import load_teacher
    from rlad_megatron.models.layout import stage_overrides

    chunks, arch = load_teacher(hf_dir, **stage_overrides(first, last))
    (model,) = chunks
    tokens = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, -1)
    mask = torch.tril(torch.ones(1, 1, SEQ, SEQ)) < 0.5
    group, rank = ps.get_pipeline_model_parallel_group(), ps.get_pipeline_model_parallel_rank()
    layers = len(model.decoder.layers)
    with torch.no_grad():
        if rank == 1:
            hidden = torch.empty(SEQ, 2, arch.hidden_size)
            dist.recv(hidden, src=dist.get_global_rank(group, 0), group=group)
            model.set_input_tensor(hidden)
        out = model(tokens, pos, mask)
        if rank == 0:
            dist.send(out.contiguous(), dst=dist.get_global_rank(group, 1), group=group)
            return {"layers": layers}
    return {"layers": layers, "logits": out[..., :arch.vocab_size]}


def _convert_chain(argvs: list[list[str]]) -> list[int]:
    """Several conversions one after the other in the same ranks (each sets up its own parallel layout; a rank's
    start-up is seconds, so one run does them all)."""
    from rlad_megatron.convert import main

    return [main(argv) for argv in argvs]


@pytest.mark.distributed
@pytest.mark.parametrize("first,last,layers", [(1, None, [1, 2]), (None, 1, [2, 1])])
def test_uneven_pp_logits_equal_transformers(hf_dir, first, last, layers):
    from transformers import AutoModelForCausalLM

    reports = run_distributed(_pp_logits, 2, pp=2, args=(str(hf_dir), first, last))
    assert [r["layers"] for r in reports] == layers
    tokens = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(tokens).logits
    assert (reports[1]["logits"] - ref).abs().max().item() < 1e-5


@pytest.mark.distributed
@pytest.mark.slow
def test_round_trip_tp_above_kv_and_uneven_pp(hf_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tp2, pp2, back = tmp_path / "tp2", tmp_path / "pp2_first1", tmp_path / "back"
    argvs = [["hf-to-mcore", "--hf", str(hf_dir), "--out", str(tp2), "--tp", "2"],
             ["mcore-to-mcore", "--ckpt", str(tp2), "--out", str(pp2), "--pp", "2", "--first-stage-layers", "1"],
             ["mcore-to-hf", "--ckpt", str(pp2), "--out", str(back), "--pp", "2", "--last-stage-layers", "1"]]
    assert run_distributed(_convert_chain, 2, tp=2, args=(argvs,)) == [[0, 0, 0]] * 2
    original, exported = load_file(hf_dir / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    tokens = torch.randint(0, 100, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(tokens).logits
        b = AutoModelForCausalLM.from_pretrained(back).eval()(tokens).logits
    assert torch.equal(a, b)


def test_bad_layouts_name_the_valid_choices(hf_dir):
    from rlad_megatron.models import load_arch, transformer_config_for

    arch = load_arch(hf_dir)
    with pytest.raises(ValueError, match=r"pipeline parallel size 2 must divide num_hidden_layers=3 .*valid choices "
                                         r"are first=None last=1, first=None last=2, first=1 last=None"):
        transformer_config_for(arch, tp=1, pp=2)
    with pytest.raises(ValueError, match=r"cannot split num_hidden_layers=3 with first-stage layers 3"):
        transformer_config_for(arch, tp=1, pp=2, num_layers_in_first_pipeline_stage=3)
    cfg = transformer_config_for(arch, tp=4, pp=2, num_layers_in_last_pipeline_stage=2)
    assert (cfg.num_layers_in_last_pipeline_stage, cfg.num_query_groups) == (2, 1)
    with pytest.raises(ValueError, match=r"tensor parallel size 3 must divide num_attention_heads=4: choose tp among "
                                         r"\[1, 2, 4\]"):
        transformer_config_for(arch, tp=3, pp=1)


def test_config_stage_fields_are_checked():
    from rlad_megatron.config import ConfigError, RunConfig

    cfg = RunConfig()
    cfg.parallel.first_stage_layers = 2
    with pytest.raises(ConfigError, match=r"parallel.first_stage_layers=2: .*pipeline_parallel > 1"):
        cfg.parallel.validate()
    cfg.parallel.pipeline_parallel = 2
    cfg.parallel.validate()
