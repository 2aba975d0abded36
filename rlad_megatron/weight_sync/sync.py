"""One weight sync: Megatron shards -> full HF tensors (``iter_hf_tensors``) -> buckets -> transport -> verify.

COLLECTIVE over the model-parallel group (TP x PP of one data-parallel replica): every rank calls
:meth:`WeightSynchronizer.sync`; the group's first rank (TP rank 0 of the first pipeline stage) holds the transport
to its engine, the others only take part in the gathers. No rank holds more than one bucket of gathered tensors
(plus the one tensor being gathered): never a second copy of the model.

A failure anywhere (transport error, stale or mismatched engine) is shared with the whole group and raised as
:class:`WeightSyncError` on every rank, so that no rank waits forever in the next collective.
"""
from __future__ import annotations

import socket
import time
import traceback
from typing import Callable, Iterable, Iterator, Protocol

import torch
import torch.distributed as dist

from rlad_megatron.models.hf_export import iter_hf_tensors
from rlad_megatron.weight_sync.buckets import Named, iter_buckets, tensor_bytes
from rlad_megatron.weight_sync.expert_gather import experts_split_over_ranks
from rlad_megatron.weight_sync.shm_gather import ShmTensorGather
from rlad_megatron.weight_sync.verify import SyncVerifier, WeightSyncError


class WeightTransport(Protocol):
    """Moves one version of the weights, as a stream of buckets, into one engine (all or nothing)."""

    def send(self, version: int, buckets: Iterator[list[Named]]) -> None:
        ...


class _Timed:
    """Wrap a tensor stream: count tensors and bytes, and time spent producing them (the learner-side gather)."""

    def __init__(self, named: Iterable[Named]):
        self._it = iter(named)
        self.tensors = self.bytes = 0
        self.produce_s = 0.0

    def __iter__(self) -> Iterator[Named]:
        while True:
            start = time.perf_counter()
            try:
                name, tensor = next(self._it)
            except StopIteration:
                self.produce_s += time.perf_counter() - start
                return
            self.produce_s += time.perf_counter() - start
            self.tensors += 1
            self.bytes += tensor_bytes(tensor)
            yield name, tensor

    def drain(self) -> None:
        for _ in self._it:
            pass


class WeightSynchronizer:
    """Stream the learner's weights into the rollout engine, version them, and verify the result.

    Args:
        transport: this rank's transport (``InProcessTransport`` / ``TorchDistTransport``), or None on the ranks
            of the model-parallel group that do not hold the engine.
        bucket_bytes: most bytes of gathered tensors held (and sent) at a time.
        verifier: checks the engine after a sync (None: no verification; not recommended).
        verify_every: verify after every N-th sync version (1: every sync; 0: never, even with a verifier).
        model_parallel_group: the group the outcome is shared over (default: Megatron's model-parallel group when
            it is initialised and has more than one rank).
        gather: how the TP shards reach the engine rank. "collective": ``iter_hf_tensors`` (gather over the process
            group; any TP/PP). "shm": through shared memory (``ShmTensorGather``; PP=1, TP ranks on one host;
            ~10x faster than gloo on CPU). "auto": "shm" when possible on CPU, else "collective".
        every_rank: every rank of the group holds an engine shard (vLLM's external launcher): each receives every
            full HF tensor (all-gather instead of gather) and vLLM's weight loaders keep the shard's slice.
        wake: with a sleeping colocated engine, ``wake("weights")`` before the weights arrive and
            ``wake("kv_cache")`` after, before the engine scores the probe (None: the engine never sleeps).
    """

    def __init__(
        self,
        transport: WeightTransport | None,
        *,
        bucket_bytes: int = 128 << 20,
        verifier: SyncVerifier | None = None,
        verify_every: int = 1,
        model_parallel_group=None,
        gather: str = "auto",
        every_rank: bool = False,
        wake: Callable[[str], None] | None = None,
    ) -> None:
        if gather not in ("auto", "collective", "shm"):
            raise ValueError(f"WeightSynchronizer: gather={gather!r}: choose 'auto', 'collective' or 'shm'")
        if bucket_bytes <= 0:
            raise ValueError(f"WeightSynchronizer: bucket_bytes must be positive, got {bucket_bytes}")
        if verify_every < 0:
            raise ValueError(f"WeightSynchronizer: verify_every must be >= 0, got {verify_every}")
        self.transport = transport
        self.bucket_bytes = bucket_bytes
        self.verifier = verifier
        self.verify_every = verify_every
        self._group = model_parallel_group
        self.last_version = 0
        self.gather = "collective" if every_rank else gather
        self.every_rank = every_rank
        self.wake = wake
        self._shm = None

    def sync(self, model_chunks: list[torch.nn.Module], arch, version: int) -> dict[str, float]:
        """Sync ``model_chunks`` (this rank's shards, described by ``arch``) as weight version ``version``.

        Returns metrics on the engine rank (``sync/seconds``, ``sync/gather_seconds``, ``sync/gbytes``,
        ``sync/gbytes_per_s``, ``sync/buckets``, and the verifier's ``sync/logprob_*``); an empty dict elsewhere.
        """
        if version <= self.last_version:
            raise ValueError(f"sync version {version} must increase (last synced: {self.last_version})")

        if not experts_split_over_ranks(arch) and self._use_shm():  # EP > 1: experts come over the EP group

            if self._shm is None:
                self._shm = ShmTensorGather(self.bucket_bytes)
            return self.sync_stream(self._shm.iter_hf_tensors(model_chunks, arch), version)
        return self.sync_stream(iter_hf_tensors(model_chunks, arch, dst_only=not self.every_rank), version)

    def _use_shm(self) -> bool:
        if self.gather != "auto":
            return self.gather == "shm"
        from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

        if torch.cuda.is_available() or ps.get_pipeline_model_parallel_world_size() != 1:
            return False
        if ps.get_tensor_model_parallel_world_size() == 1:
            return True

        hosts: list[str | None] = [None] * ps.get_tensor_model_parallel_world_size()
        dist.all_gather_object(hosts, socket.gethostname(), group=ps.get_tensor_model_parallel_group())
        self.gather = "shm" if len(set(hosts)) == 1 else "collective"
        return self.gather == "shm"

    def sync_stream(self, named: Iterable[Named], version: int) -> dict[str, float]:
        """:meth:`sync` from any stream of HF tensors (collective in the same way as the stream itself)."""
        start = time.perf_counter()
        stream = _Timed(named)
        error: str | None = None
        buckets = 0
        if self.transport is None:
            stream.drain()
        else:
            def counted() -> Iterator[list[Named]]:
                nonlocal buckets
                for bucket in iter_buckets(stream, self.bucket_bytes):
                    buckets += 1
                    yield bucket

            try:
                if self.wake is not None:
                    self.wake("weights")
                self.transport.send(version, counted())
                if self.wake is not None:
                    self.wake("kv_cache")
            except Exception:  # shared with the group below, then raised on every rank
                error = f"weight sync {version} failed in the transport:\n{traceback.format_exc()}"
            stream.drain()  # keep taking part in the gathers even after a failure
        seconds = time.perf_counter() - start
        self._raise_if_any(error)
        metrics: dict[str, float] = {}
        if self.transport is not None:
            metrics = {
                "sync/seconds": seconds,
                "sync/gather_seconds": stream.produce_s,
                "sync/gbytes": stream.bytes / 1e9,
                "sync/gbytes_per_s": stream.bytes / 1e9 / max(seconds, 1e-9),
                "sync/buckets": float(buckets),
                "sync/tensors": float(stream.tensors),
            }
        if self.verifier is not None and self.verify_every and version % self.verify_every == 0:
            try:
                checked = self.verifier.check(version)
            except WeightSyncError as exc:
                error = str(exc)
            else:
                metrics.update(checked or {})
        self._raise_if_any(error)
        self.last_version = version
        return metrics

    def _raise_if_any(self, error: str | None) -> None:
        group = self._group
        if group is None and dist.is_initialized():
            from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

            if ps.model_parallel_is_initialized():
                group = ps.get_model_parallel_group()
        if group is not None and dist.get_world_size(group) > 1:
            errors: list[str | None] = [None] * dist.get_world_size(group)
            dist.all_gather_object(errors, error, group=group)
            error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise WeightSyncError(error)
