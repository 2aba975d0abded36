"""Learner -> rollout-engine weight sync: HF-named tensors streamed in bounded buckets, versioned, verified.

    sync = WeightSynchronizer(transport, bucket_bytes=64 << 20, verifier=SyncVerifier(engine, learner_logprobs, probe))
    metrics = sync.sync(model_chunks, arch, version=step)     # collective over the model-parallel group

- ``buckets``: group a stream of tensors into buckets of at most ``bucket_bytes``.
- ``inprocess``: transport into a colocated (in-process) engine.
- ``dist_transport``: transport into a disaggregated engine over a two-rank torch.distributed group.
- ``verify``: probe-batch log-prob mismatch after every sync; stale or failed syncs raise ``WeightSyncError``.

Nothing here imports vLLM.
"""
from rlad_megatron.weight_sync.buckets import iter_buckets
from rlad_megatron.weight_sync.sync import WeightSynchronizer, WeightTransport
from rlad_megatron.weight_sync.verify import ProbeBatch, SyncVerifier, WeightSyncError, make_probe_batch

__all__ = [
    "ProbeBatch", "SyncVerifier", "WeightSyncError", "WeightSynchronizer", "WeightTransport", "iter_buckets",
    "make_probe_batch",
]
