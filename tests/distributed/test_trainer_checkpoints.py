"""Trainer checkpoints are written aside and renamed into place with a manifest; a failed save (a full disk) leaves
the previous checkpoint loadable; a corrupted or truncated shard is detected and resume falls back to the previous
complete checkpoint, naming the bad file; `convert mcore-to-hf` reads trainer checkpoints."""
from __future__ import annotations

import errno
import functools
import io
import json
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model
from rlad_megatron import checkpoint_files as ckf

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _student(hf: str):
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.policy import build_student
    from rlad_megatron.models import load_hf_model

    modules, arch = load_hf_model(hf, trainable=True)
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-2))
    return modules, wrapped, optimizer, arch


def _train_step(wrapped, optimizer, seed: int) -> None:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 100, (2, 16), generator=g)
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
             "position_ids": torch.arange(15).expand(2, 15)}

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["tokens"], b["position_ids"], None, labels=b["labels"])
        return out, functools.partial(lambda o: (o.float().mean(), {"loss": o.float().mean().detach()}))

    for w in wrapped:
        w.zero_grad_buffer()
    optimizer.zero_grad()
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([batch]), model=wrapped,
                                num_microbatches=1, seq_length=15, micro_batch_size=2)
    assert optimizer.step()[0]


def _weights(modules) -> dict[str, torch.Tensor]:
    from rlad_megatron.testing.gather import gather_full

    return {k: v.clone() for k, v in gather_full(modules[0]).items()}


def _save_body(hf: str, root: str, direct_hf: str) -> dict:
    """TP=2: save steps 1 and 2 (keep 2); export step 2 directly; then a re-save of step 2 fails with ENOSPC."""
    import megatron.core.dist_checkpointing as dcp

    from rlad_megatron.atomic_write import DiskFullError
    from rlad_megatron.models import export_hf_checkpoint
    from rlad_megatron.trainer.checkpoints.state import save_trainer_checkpoint

    modules, wrapped, optimizer, arch = _student(hf)
    saved = {}
    for step in (1, 2):
        _train_step(wrapped, optimizer, seed=step)
        save_trainer_checkpoint(Path(root), step, wrapped, optimizer, {"data": {"pos": step}}, keep=2, arch=arch,
                                tokenizer_dir=hf)
        saved[step] = _weights(modules)
    export_hf_checkpoint(modules, arch, Path(direct_hf), tokenizer_dir=hf)

    real_save = dcp.save

    def full_disk(state, folder, *a, **k):  # a partial shard, then the disk is full
        (Path(folder) / f"__partial_{torch.distributed.get_rank()}.distcp").write_bytes(b"x" * 1000)
        torch.distributed.barrier()  # every rank has written its part (a collective save) before any fails
        raise OSError(errno.ENOSPC, "No space left on device")

    dcp.save = full_disk
    _train_step(wrapped, optimizer, seed=3)
    try:
        save_trainer_checkpoint(Path(root), 2, wrapped, optimizer, {"data": {"pos": 3}}, keep=1)
        failed = None
    except DiskFullError as err:  # the injected ENOSPC, said as a full disk
        failed = err.__cause__.errno
    finally:
        dcp.save = real_save
    return {"saved": saved, "failed": failed}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the vocabulary padding, which depends on the tensor-parallel size."""
    rows = min(a.shape[0], b.shape[0])
    return a.shape[1:] == b.shape[1:] and torch.equal(a[:rows], b[:rows])


def _load_body(hf: str, root: str) -> dict:
    """One rank: load the newest intact checkpoint; then corrupt it and find the fallback, capturing the messages."""
    from rlad_megatron.trainer.checkpoints.state import find_loadable_checkpoint, load_trainer_checkpoint

    modules, wrapped, optimizer, _ = _student(hf)
    out = {}
    for name in ("intact", "corrupt_shard", "truncated_shard"):
        if name == "corrupt_shard":
            shard = sorted((Path(root) / "step_000002" / "megatron").glob("*.distcp"))[0]
            data = bytearray(shard.read_bytes())
            data[100:4196] = bytes(b ^ 0xFF for b in data[100:4196])  # 4 KiB flipped, same size
            shard.write_bytes(bytes(data))
            out["bad_file"] = str(shard)
        if name == "truncated_shard":
            shard = sorted((Path(root) / "step_000001" / "megatron").glob("*.distcp"))[-1]
            shard.write_bytes(shard.read_bytes()[:-10])
            out["truncated_file"] = str(shard)
        messages = io.StringIO()
        with redirect_stderr(messages):
            try:
                folder = find_loadable_checkpoint(Path(root))
            except ckf.CheckpointCorrupt as err:
                out[name] = {"error": str(err), "messages": messages.getvalue()}
                continue
        state = load_trainer_checkpoint(folder, wrapped, optimizer)
        out[name] = {"folder": folder.name, "step": state["step"], "data": state["data"],
                     "weights": _weights(modules), "messages": messages.getvalue()}
    return out


def test_atomic_save_enospc_corruption_fallback_and_convert(tmp_path: Path) -> None:
    hf = make_tiny_hf_model(tmp_path / "hf", "qwen3", num_layers=2, seed=3)
    root = tmp_path / "run" / "checkpoints"
    saved = run_distributed(_save_body, 2, tp=2, args=(str(hf), str(root), str(tmp_path / "direct")),
                            timeout=400)[0]
    # The simulated full disk failed the save and cleaned its temporary folder; both checkpoints are in place.
    assert saved["failed"] == errno.ENOSPC
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_000001", "step_000002"]
    assert (root / "latest").read_text() == "step_000002"
    for step in (1, 2):
        folder = root / ckf.step_folder_name(step)
        manifest = json.loads((folder / ckf.MANIFEST).read_text())["files"]
        assert sorted(manifest) == ckf.checkpoint_files(folder)
        assert any(name.endswith(".distcp") for name in manifest) and "megatron/rlad_arch.json" in manifest
        assert all(manifest[n]["size"] == (folder / n).stat().st_size for n in manifest)
        ckf.verify_checkpoint(folder)

    # A trainer checkpoint converts to HF, bit for bit what the trainer itself exports.
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "mcore-to-hf",
                           "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "converted")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    direct, converted = load_file(tmp_path / "direct" / "model.safetensors"), \
        load_file(tmp_path / "converted" / "model.safetensors")
    assert sorted(direct) == sorted(converted)
    assert all(torch.equal(direct[k], converted[k]) for k in direct)
    assert (tmp_path / "converted" / "tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial exports left

    got = run_distributed(_load_body, 1, args=(str(hf), str(root)), timeout=400)[0]
    intact = got["intact"]
    assert intact["folder"] == "step_000002" and intact["step"] == 2 and intact["data"] == {"pos": 2}
    assert intact["messages"] == ""
    for k, v in saved["saved"][2].items():
        assert _same(intact["weights"][k], v), k
    # 4 KiB flipped inside a shard of the latest checkpoint: detected, named, and the previous one is loaded.
    fallback = got["corrupt_shard"]
    assert fallback["folder"] == "step_000001" and fallback["step"] == 1
    assert got["bad_file"] in fallback["messages"] and "SHA-256" in fallback["messages"]
    for k, v in saved["saved"][1].items():
        assert _same(fallback["weights"][k], v), k
    # Both damaged: an error that names both files.
    assert got["bad_file"] in got["truncated_shard"]["error"]
    assert got["truncated_file"] in got["truncated_shard"]["error"] and "bytes" in got["truncated_shard"]["error"]
