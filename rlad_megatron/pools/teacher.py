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


def request_of(batch: SequenceBatch, topk: int = 0) -> ScoreRequest:
    """The batch's rows as a pool request: every sequence (prompt + response) up to its real length (``topk``: the
    reply carries the teacher's top-k per position too)."""
    lengths = batch.sequence_lengths()
    width = max(2, int(lengths.max()) if len(batch) else 2)
    tokens = batch.tokens[:, :width]
    if tokens.shape[1] < width:
        tokens = torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]))
    return ScoreRequest(tokens, lengths, topk)


class PooledTeacher(Teacher):
    """``client`` on the replica's leader (None on its other ranks); ``replica_group`` shares the leader's result
    (``leader``: its rank in the default group); the last pipeline stage returns it. ``topk`` > 0: every request
    asks for the teacher's top-k too (``loss.topk_kl``), which :meth:`token_topk` returns from the same reply."""

    def __init__(self, client: ScoringClient | None, replica_group: Any, *, leader: int, topk: int = 0) -> None:
        self.client = client
        self.group = replica_group
        self.leader = leader
        self.topk = topk
        self._shared: tuple[ScoreRequest, tuple] | None = None  # the latest batch's reply, as every rank holds it
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
            self._ask(ScoreRequest.from_rows(rows, self.topk), at_arrival=True)

    def prefetch(self, batch: SequenceBatch) -> None:
        if self.client is not None:
            self._ask(request_of(batch, self.topk), at_arrival=False, unless_asked=True)

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

        out = self._scored(batch)[0]
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return out.to(batch.tokens.device)

    def token_topk(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        from megatron.core import parallel_state as ps

        if k != self.topk:
            raise ValueError(f"PooledTeacher.token_topk: the pool was asked for the top-{self.topk}, not {k}")
        _, lp, ids = self._scored(batch)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        return lp.to(batch.tokens.device), ids.to(batch.tokens.device)

    def _scored(self, batch: SequenceBatch) -> tuple:
        """``(log-probs [B, L-1], top-k log-probs [B, L-1, k] | None, top-k ids | None)`` of ``batch`` on every rank
        of the replica (one reply per batch: the log-probs and the top-k of the same rows come from it)."""
        request = request_of(batch, self.topk)
        if self._shared is not None and self._shared[0].same_rows(request):
            return self._shared[1]
        start = time.perf_counter()
        out = torch.zeros(len(batch), batch.tokens.shape[1] - 1, dtype=torch.float32)
        k = self.topk
        topk_lp = torch.zeros(*out.shape, k, dtype=torch.float32) if k else None
        topk_ids = torch.zeros(*out.shape, k, dtype=torch.int64) if k else None
        facts = torch.zeros(2, dtype=torch.float64)  # the pool's busy seconds, asked at arrival
        if self.client is not None:
            reply, at_arrival = self._reply(request)
            cols = min(out.shape[1], reply.logprobs.shape[1])
            out[:, :cols] = reply.logprobs[:, :cols]
            if k:
                topk_lp[:, :cols] = reply.topk_logprobs[:, :cols]
                topk_ids[:, :cols] = reply.topk_ids[:, :cols].long()
            facts[0], facts[1] = reply.busy_s, float(at_arrival)
        if self.group is not None and dist.get_world_size(self.group) > 1:
            from rlad_megatron.device import collective_device

            device = collective_device(self.group)
            values = [facts.to(out.dtype), out.flatten()] + ([topk_lp.flatten()] if k else [])
            shared = torch.cat(values).to(device)
            dist.broadcast(shared, src=self.leader, group=self.group)
            shared = shared.cpu()
            facts, out = shared[:2].double(), shared[2:2 + out.numel()].view_as(out)
            if k:
                topk_lp = shared[2 + out.numel():].view_as(topk_lp)
                ids = topk_ids.to(device)
                dist.broadcast(ids, src=self.leader, group=self.group)
                topk_ids = ids.cpu()
        self.last_busy_s, self.last_asked_at_arrival = float(facts[0]), bool(facts[1])
        self.last_wait_s = time.perf_counter() - start
        self._shared = (request, (out, topk_lp, topk_ids))
        return self._shared[1]

    def close(self) -> None:
        if self.client is not None:
            for _, ticket, _ in self._prefetched:
                self.client.collect(ticket)
            self._prefetched = []
            self.client.close()
            self.client = None
