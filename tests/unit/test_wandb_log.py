"""Optional Weights & Biases logging through MetricsLogger, in offline mode (no network, no API key): the logged
history is read back from the run's .wandb file and compared with what was logged; off by default leaves no trace."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from rlad_megatron.config import ConfigError, WandbConfig, load_run_config
from rlad_megatron.trainer.observability.logger import MetricsLogger

wandb = pytest.importorskip("wandb")


def _records(path: Path):
    """The protobuf records of a .wandb file (W&B's leveldb-style log: a 7-byte header, then 32 KiB blocks of
    chunks with a 7-byte header each: crc32, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def _complete_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """The records of the run's .wandb file once its exit record is there: wandb-core's writer can still be
    flushing for a moment after ``run.finish()`` returns (seen under load: the file held only its header)."""
    (wandb_file,) = run_dir.glob("*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(_records(wandb_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _history(run_dir: Path) -> tuple[list[dict], dict]:
    rows, config = [], {}
    for record in _complete_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "run":
            config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
    return rows, config


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a request would fail at once, not go out
    monkeypatch.setenv("WANDB_CONFIG_DIR", "/nonexistent-wandb-config")  # no stored credentials either


def test_offline_run_holds_the_logged_metrics_and_config(tmp_path: Path, no_network: None) -> None:
    cfg = WandbConfig(enabled=True, mode="offline", project="rlad-test", tags=["unit"])
    logger = MetricsLogger(tmp_path, total_steps=3, wandb=cfg, run_config={"loss": {"alpha": 0.5}})
    logger.log(1, {"reward/mean": 0.25, "loss/loss": 1.5})
    logger.log(2, {"reward/mean": 0.5, "loss/loss": float("nan")})  # non-finite: left out, like null in JSONL
    logger.log(3, {"reward/mean": 0.75, "eval/accuracy": 0.4})
    logger.close()

    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    rows, config = _history(run_dir)
    logged = [{k: v for k, v in row.items() if not k.startswith("_") and not k.startswith("curves")} for row in rows]
    assert [row["_step"] for row in rows] == [1, 2, 3]
    assert logged == [{"reward/mean": 0.25, "loss/loss": 1.5}, {"reward/mean": 0.5},
                      {"reward/mean": 0.75, "eval/accuracy": 0.4}]
    assert rows[-1]["curves/_type"] == "image-file"  # the curves PNG goes along at the end
    assert config["loss"] == {"alpha": 0.5}


def test_resumed_run_keeps_the_wandb_run_id(tmp_path: Path, no_network: None) -> None:
    cfg = WandbConfig(enabled=True, mode="offline")
    first = MetricsLogger(tmp_path, total_steps=4, wandb=cfg)
    first.log(1, {"reward/mean": 0.1})
    first.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    time.sleep(1.1)  # W&B names offline run folders by the second
    resumed = MetricsLogger(tmp_path, total_steps=4, start_step=1, wandb=cfg)
    resumed.log(2, {"reward/mean": 0.2})
    resumed.close()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    folders = sorted((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))  # `wandb sync` joins them
    assert [[row["_step"] for row in _history(folder)[0]] for folder in folders] == [[1], [2]]


def test_off_by_default_leaves_no_trace(tmp_path: Path) -> None:
    assert WandbConfig().enabled is False
    logger = MetricsLogger(tmp_path, total_steps=1, wandb=WandbConfig())
    logger.log(1, {"reward/mean": 0.1})
    logger.close()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_run_id").exists()


def test_wandb_section_parses_and_validates() -> None:
    base = ["model.student=s", "model.teacher=t", "data.train_files=[a.jsonl]"]
    cfg = load_run_config(None, base + ["trainer.wandb.enabled=true", "trainer.wandb.mode=offline",
                                        "trainer.wandb.tags=[a,b]", "trainer.wandb.name=run1"])
    assert cfg.trainer.wandb == WandbConfig(enabled=True, mode="offline", tags=["a", "b"], name="run1")
    with pytest.raises(ConfigError, match="trainer.wandb.mode='cloud'"):
        load_run_config(None, base + ["trainer.wandb.mode=cloud"])
    with pytest.raises(ConfigError, match="trainer.wandb.api_key"):
        load_run_config(None, base + ["trainer.wandb.api_key=secret"])  # no place for secrets in a config
