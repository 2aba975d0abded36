"""HF loader: errors name file and tensor; sharded (index) checkpoints; the frozen teacher and tokenizer checks;
and the memory bound (a rank never holds more than its shard plus one full tensor while loading)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

Q0 = "model.layers.0.self_attn.q_proj.weight"


def _error(path: Path) -> str:
    from rlad_megatron.models import load_hf_model

    try:
        load_hf_model(path)
    except Exception as err:  # noqa: BLE001 - the test inspects the message
        return f"{type(err).__name__}: {err}"
    return "no error"


def _rank_errors(root: str) -> dict:
    from rlad_megatron.models import load_hf_model, load_teacher
    from rlad_megatron.models.teacher import check_tokenizer_compatible

    out = {name: _error(Path(root) / name) for name in ("corrupt", "truncated", "missing", "shape", "no_shard")}
    chunks, _ = load_hf_model(Path(root) / "sharded")
    out["sharded_ok"] = all(p.requires_grad for p in chunks[0].parameters()) and chunks[0].training
    teacher, arch = load_teacher(Path(root) / "teacher", student_dir=Path(root) / "sharded")
    out["teacher_frozen"] = (not any(p.requires_grad for c in teacher for p in c.parameters())
                             and not any(c.training for c in teacher))
    out["teacher_layers"] = arch.num_layers
    try:
        check_tokenizer_compatible(Path(root) / "sharded", Path(root) / "other_tok")
        out["tok"] = "no error"
    except Exception as err:  # noqa: BLE001
        out["tok"] = f"{type(err).__name__}: {err}"
    return out


def _other_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlad_megatron.data.char_tokenizer import char_vocab

    vocab = char_vocab()
    vocab["<eos>"], vocab["<unk>"] = vocab["<unk>"], vocab["<eos>"]  # same tokens, two ids swapped
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.mark.distributed
def test_errors_sharded_teacher_tokenizer(tmp_path):
    good = make_tiny_hf_model(tmp_path / "good", "qwen2")
    tensors = load_file(good / "model.safetensors")

    def variant(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(good, path)
        return path

    (variant("corrupt") / "model.safetensors").write_bytes(b"\xff" * 64 + b"garbage")
    blob = (good / "model.safetensors").read_bytes()
    (variant("truncated") / "model.safetensors").write_bytes(blob[: len(blob) * 2 // 3])
    save_file({k: v for k, v in tensors.items() if k != Q0}, str(variant("missing") / "model.safetensors"),
              metadata={"format": "pt"})
    save_file({**tensors, Q0: tensors[Q0][:, :32].contiguous()}, str(variant("shape") / "model.safetensors"),
              metadata={"format": "pt"})
    # a sharded checkpoint (index + 3 files), and one whose index names a file that is not there
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(good).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shutil.copy(good / "tokenizer.json", tmp_path / "sharded")
    shutil.copy(good / "tokenizer_config.json", tmp_path / "sharded")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    shutil.copytree(tmp_path / "sharded", tmp_path / "no_shard")
    index = json.loads((tmp_path / "no_shard" / "model.safetensors.index.json").read_text())
    lost = index["weight_map"]["model.norm.weight"]
    (tmp_path / "no_shard" / lost).unlink()
    make_tiny_hf_model(tmp_path / "teacher", "qwen2", num_layers=4, hidden_size=96, intermediate_size=192,
                       num_heads=6, num_kv_heads=2, seed=5)
    make_tiny_hf_model(tmp_path / "other_tok", "qwen2", tokenizer=_other_tokenizer())

    (out,) = run_distributed(_rank_errors, 1, args=(str(tmp_path),))
    assert "HFCheckpointError" in out["corrupt"] and "corrupt" in out["corrupt"], out["corrupt"]
    assert "HFCheckpointError" in out["truncated"] and "truncated" in out["truncated"], out["truncated"]
    for key in ("corrupt", "truncated", "missing", "shape", "no_shard"):
        assert f"{key}/" in out[key] and "model." in out[key], (key, out[key])  # names the file and a tensor
    assert Q0 in out["missing"] and "missing" in out["missing"]
    assert Q0 in out["shape"] and "[64, 32]" in out["shape"] and "[64, 64]" in out["shape"]
    assert lost in out["no_shard"] and "file missing" in out["no_shard"]
    assert out["sharded_ok"] and out["teacher_frozen"] and out["teacher_layers"] == 4
    assert "TokenizerMismatchError" in out["tok"] and "<eos>" in out["tok"], out["tok"]


def _rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def _rank_memory(path: str) -> dict:
    """Anonymous RSS while loading: sampled after every assembled shard (the loader's high point for that tensor)
    and after loading. Also the loader's own account of the bytes it holds per tensor, and, for comparison, what a
    naive whole-state-dict load costs (shows the bound can be broken)."""
    from safetensors.torch import load_file as naive_load

    from rlad_megatron.models import build_model_chunks, load_arch
    from rlad_megatron.models.hf_loader import load_hf_weights

    arch = load_arch(path)
    base = _rss_anon()
    chunks = build_model_chunks(arch)
    shard_bytes = sum(p.numel() * p.element_size() for c in chunks for p in c.parameters())
    samples, held = [], []
    load_hf_weights(chunks, arch, path,
                    on_shard=lambda name, shard: (samples.append(_rss_anon()), held.append(shard.nbytes)))
    samples.append(_rss_anon())
    # a naive loader: the whole state dict in memory (load_file maps the file; clone() is what sharding copies do)
    state = {k: v.clone() for k, v in naive_load(str(Path(path) / "model.safetensors")).items()}
    naive_peak = _rss_anon()
    del state
    return {"base": base, "peak": max(samples), "shard_bytes": shard_bytes, "max_held": max(held),
            "naive_peak": naive_peak}


@pytest.mark.distributed
def test_loading_holds_at_most_shard_plus_one_tensor(tmp_path):
    # 32 MiB embedding + 32 MiB head dominate (~69 MiB model): a copy of the model would be obvious.
    path = make_tiny_hf_model(tmp_path / "m", "llama", vocab_size=32768, hidden_size=256, intermediate_size=512)
    largest = 32768 * 256 * 4
    (m,) = run_distributed(_rank_memory, 1, args=(str(path),),
                           env={"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"})
    slack = 12 << 20  # allocator and interpreter noise
    assert m["max_held"] <= largest
    assert m["peak"] - m["base"] <= m["shard_bytes"] + largest + slack, m
    assert m["naive_peak"] - m["base"] > m["shard_bytes"] + largest + slack, m  # the check can fail
