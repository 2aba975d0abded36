"""A teacher in a pool of its own (``teacher.placement: separate``): the learner replica's leader sends the rows' token
ids to the pool and gets every position's log-prob back; the replica's other ranks receive them from the leader.

    teacher = PooledTeacher(client, replica_group, leader=0)    # client: pools/client.py (None off the leader)
    teacher.prefetch(batch)              # ask now (async mode: the rollout pipeline asks as soon as samples exist)
    ...                                  # the pool scores while the learner computes
    batch.teacher_logprobs = teacher.token_logprobs(batch)      # the prefetched reply, or asked and waited for now

A request is matched to a prefetched one by its rows (token ids and lengths), so a batch that changed since (a
dropped stale batch, a resumed run) is simply asked for again; replies nobody takes are drained first.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.pools.client import ScoringClient
from rlad_megatron.pools.wire import ScoreReply, ScoreRequest
from rlad_megatron.teacher.base import Teacher


def request_of(batch: SequenceBatch) -> ScoreRequest:
    """The batch's rows as a pool request: every sequence (prompt + response) up to its real length."""
    lengths = batch.sequence_lengths()
    width = max(2, int(lengths.max()) if len(batch) else 2)
    tokens = batch.tokens[:, :width]
    if tokens.shape[1] < width:
        tokens = torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]))
    return ScoreRequest(tokens, lengths)


class PooledTeacher(Teacher):
    """``client`` on the replica's leader (None on its other ranks); ``replica_group`` shares the leader's result
    (``leader``: its rank in the default group); the last pipeline stage returns it."""

    def __init__(self, client: ScoringClient | None, replica_group: Any, *, leader: int) -> None:
        self.client = client
        self.group = replica_group
        self.leader = leader
        self._prefetched: list[tuple[ScoreRequest, Any, bool]] = []  # (rows, ticket, asked when the samples arrived)
        self._lock = threading.Lock()  # the rollout pipeline's arrival thread asks too
        self.last_busy_s = 0.0
        """The pool's compute seconds for the latest batch (max over its replicas)."""
        self.last_wait_s = 0.0
        """Seconds this rank waited for the latest batch's reply."""
        self.last_asked_at_arrival = False
        """Whether the latest batch was asked for as soon as its samples arrived (:meth:`prefetch_rows`)."""

    @property
    def separate(self) -> bool:
        return True

    def prefetch_rows(self, rows: list[list[int]]) -> None:
        """Ask the pool now for these token-id rows (on the leader; a no-op elsewhere)."""
        if self.client is not None and rows:
            self._ask(ScoreRequest.from_rows(rows), at_arrival=True)

    def prefetch(self, batch: SequenceBatch) -> None:
        if self.client is not None:
            self._ask(request_of(batch), at_arrival=False, unless_asked=True)

    def _ask(self, request: ScoreRequest, *, at_arrival: bool, unless_asked: bool = False) -> None:
        with self._lock:
            if unless_asked and any(r.same_rows(request) for r, _, _ in self._prefetched):
                return
            self._prefetched.append((request, self.client.submit(request), at_arrival))

    def _reply(self, request: ScoreRequest) -> tuple[ScoreReply, bool]:
        while True:  # in order: a reply nobody takes is drained
            with self._lock:
                if not self._prefetched:
                    break
                asked, ticket, at_arrival = self._prefetched.pop(0)
            reply = self.client.collect(ticket)
            if asked.same_rows(request):
                return reply, at_arrival
        with self._lock:
            ticket = self.client.submit(request)
        return self.client.collect(ticket), False

    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        from megatron.core import parallel_state as ps

        start = time.perf_counter()
        out = torch.zeros(len(batch), batch.tokens.shape[1] - 1, dtype=torch.float32)
        facts = torch.zeros(2, dtype=torch.float64)  # the pool's busy seconds, asked at arrival
        if self.client is not None:
            reply, at_arrival = self._reply(request_of(batch))
            cols = min(out.shape[1], reply.logprobs.shape[1])
            out[:, :cols] = reply.logprobs[:, :cols]
            facts[0], facts[1] = reply.busy_s, float(at_arrival)
        if self.group is not None and dist.get_world_size(self.group) > 1:
            from rlad_megatron.device import collective_device

            shared = torch.cat([facts.to(out.dtype), out.flatten()]).to(collective_device(self.group))
            dist.broadcast(shared, src=self.leader, group=self.group)
            facts, out = shared[:2].cpu().double(), shared[2:].cpu().view_as(out)
        self.last_busy_s, self.last_asked_at_arrival = float(facts[0]), bool(facts[1])
        self.last_wait_s = time.perf_counter() - start
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return out.to(batch.tokens.device)

    def close(self) -> None:
        if self.client is not None:
            for _, ticket, _ in self._prefetched:
                self.client.collect(ticket)
            self._prefetched = []
            self.client.close()
            self.client = None
