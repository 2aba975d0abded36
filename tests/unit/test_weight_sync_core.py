"""Weight-sync pieces without an engine: bucketing, probe mismatch, verifier and synchronizer logic
(with small fake engines/transports: the real ones are exercised in tests/e2e)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlad_megatron.weight_sync import (
    SyncVerifier, WeightSynchronizer, WeightSyncError, iter_buckets, make_probe_batch,
)
from rlad_megatron.weight_sync.verify import logprob_mismatch


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), max_size=30), bucket=st.integers(4, 200))
def test_buckets_preserve_order_and_bound_bytes(sizes, bucket):
    named = [(f"t{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate(sizes)]
    buckets = list(iter_buckets(named, bucket))
    assert [name for b in buckets for name, _ in b] == [name for name, _ in named]
    for b in buckets:
        total = sum(t.numel() * 4 for _, t in b)
        assert total <= bucket or len(b) == 1  # an oversized tensor travels alone
    for prev, nxt in zip(buckets, buckets[1:]):  # greedy: the next tensor did not fit
        assert sum(t.numel() * 4 for _, t in prev) + nxt[0][1].numel() * 4 > bucket


def test_buckets_are_lazy_and_reject_bad_size():
    consumed = []

    def stream():
        for i in range(10):
            consumed.append(i)
            yield f"t{i}", torch.zeros(4)

    it = iter_buckets(stream(), 32)  # two 16-byte tensors per bucket
    assert [n for n, _ in next(it)] == ["t0", "t1"]
    assert consumed == [0, 1, 2]  # one tensor of look-ahead, never the whole model
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_buckets([], 0))


def test_probe_batch_deterministic_and_mismatch():
    a, b = make_probe_batch(50, seed=3), make_probe_batch(50, seed=3)
    assert a == b and a != make_probe_batch(50, seed=4)
    assert all(0 <= t < 50 for s in a.sequences for t in s)
    m = logprob_mismatch([[-1.0, -2.0], [-3.0]], [[-1.0, -2.5], [-2.0]])
    assert m == {"max_abs": 1.0, "mean_abs": 0.5}
    with pytest.raises(ValueError, match="shapes"):
        logprob_mismatch([[-1.0]], [[-1.0, -2.0]])


class _FakeEngine:
    """Serves log-probs as a function of its current weight ``w`` (a float) and reports a version."""

    def __init__(self):
        self.w, self.weight_version, self.pending = 0.0, 0, None
        self.config = type("C", (), {"weight_load": "inplace"})()

    def score(self, seqs, plens):
        return [[-self.w - 0.01 * t for t in s[p:]] for s, p in zip(seqs, plens)]

    def begin_sync(self, v):
        self.pending = v

    def load_bucket(self, bucket):
        for name, t in bucket:
            if name == "w":
                self.w = float(t)

    def finish_sync(self, v):
        self.weight_version, self.pending = v, None


def _learner(state):
    return lambda seqs, plens: [[-state["w"] - 0.01 * t for t in s[p:]] for s, p in zip(seqs, plens)]


def test_synchronizer_versions_verifies_and_detects_stale_and_failures():
    from rlad_megatron.weight_sync.inprocess import InProcessTransport

    engine, state = _FakeEngine(), {"w": 0.5}
    verifier = SyncVerifier(engine, _learner(state), make_probe_batch(20, num_sequences=2, length=6))
    sync = WeightSynchronizer(InProcessTransport(engine), bucket_bytes=8, verifier=verifier)
    named = [("w", torch.tensor(0.5)), ("other", torch.zeros(3))]
    m = sync.sync_stream(iter(named), version=1)
    assert engine.weight_version == 1 and m["sync/logprob_max_abs"] == 0.0 and m["sync/buckets"] == 2
    assert m["sync/tensors"] == 2 and m["sync/gbytes"] == pytest.approx(16e-9)

    state["w"] = 0.7  # learner updated, sync skipped: stale version
    with pytest.raises(WeightSyncError, match="stale rollout weights: the engine serves weight version 1"):
        verifier.check(expected_version=2)

    class _Lossy(InProcessTransport):  # reports success but drops the tensors: caught by the probe
        def send(self, version, buckets):
            self.engine.begin_sync(version)
            list(buckets)
            self.engine.finish_sync(version)

    with pytest.raises(WeightSyncError, match="disagree after sync 2"):
        WeightSynchronizer(_Lossy(engine), verifier=verifier).sync_stream(iter([("w", torch.tensor(0.7))]), 2)

    class _Broken:
        def send(self, version, buckets):
            next(buckets)
            raise OSError("pipe broke")

    drained = []

    def stream():
        for item in [("w", torch.tensor(0.7)), ("x", torch.zeros(1))]:
            drained.append(item[0])
            yield item

    with pytest.raises(WeightSyncError, match="failed in the transport(.|\n)*pipe broke"):
        WeightSynchronizer(_Broken(), bucket_bytes=4).sync_stream(stream(), 3)
    assert drained == ["w", "x"]  # the stream (a collective on other ranks) is always run to the end


def test_synchronizer_argument_checks():
    with pytest.raises(ValueError, match="bucket_bytes"):
        WeightSynchronizer(None, bucket_bytes=0)
    with pytest.raises(ValueError, match="gather"):
        WeightSynchronizer(None, gather="nccl")
    with pytest.raises(ValueError, match="max_abs_tol"):
        SyncVerifier(None, _learner({"w": 0}), make_probe_batch(5, length=6), max_abs_tol=0)
