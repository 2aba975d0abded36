"""The learner side of a teacher pool: a replica leader's clients, each turning a :class:`ScoreRequest` into a
:class:`ScoreReply`, asked now and collected later.

    ticket = client.submit(ScoreRequest.from_rows(rows))     # returns at once
    ...                                                      # the pool scores while the learner computes
    reply = client.collect(ticket)                           # per-token log-probs of every row

- :class:`MegatronPoolClient`: the teacher ranks of the job (``teacher.source=megatron``), over the pool's bridge
  group; the rows are dealt over the pool's replicas by token work (longest first to the least loaded), every
  replica gets a request each round (possibly empty: a replica scores once per round, on every client's rows).
- :class:`EngineScoreClient`: a vLLM teacher in an engine process of its own (``teacher.source=vllm``), through
  its pipe (prompt log-probs).
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Protocol

import torch

from rlad_megatron.learner.balance import deal_by_work
from rlad_megatron.pools.wire import (
    PendingReply, ScoreReply, ScoreRequest, post_reply_receive, post_request, post_stop, wait_all,
)


class ScoringClient(Protocol):
    """What :class:`rlad_megatron.pools.teacher.PooledTeacher` asks of a pool."""

    def submit(self, request: ScoreRequest) -> Any:
        """Send ``request``; returns a ticket for :meth:`collect` (requests are collected in any order)."""
        ...

    def collect(self, ticket: Any) -> ScoreReply:
        """Wait for the ticket's reply (rows in the request's order, ``[n, W-1]``)."""
        ...

    def close(self) -> None:
        """Tell the pool this client is done (and release what it holds)."""
        ...


@dataclasses.dataclass
class _Ticket:
    request: ScoreRequest
    rows: list[list[int]]
    """The request's rows sent to each pool replica."""
    replies: list[PendingReply | None]
    sends: list


class MegatronPoolClient:
    """A learner replica leader's connection to the teacher ranks' replica leaders ``servers`` (ranks of the
    bridge ``group``)."""

    def __init__(self, group, servers: list[int]) -> None:
        if not servers:
            raise ValueError("MegatronPoolClient: the teacher pool has no replica")
        self.group = group
        self.servers = list(servers)
        self._lock = threading.Lock()  # requests go out whole and in order, from either thread

    def submit(self, request: ScoreRequest) -> _Ticket:
        deal = deal_by_work(request.lengths.tolist(), len(self.servers))
        replies: list[PendingReply | None] = []
        sends: list = []
        with self._lock:
            for server, rows in zip(self.servers, deal):
                part = request.select(rows)
                replies.append(post_reply_receive(self.group, server, part))
                sends += post_request(self.group, server, part)
        return _Ticket(request, deal, replies, sends)

    def collect(self, ticket: _Ticket) -> ScoreReply:
        request = ticket.request
        n, cols, k = len(request), request.width - 1, request.topk
        out = ScoreReply(torch.zeros(n, cols, dtype=torch.float32),
                         torch.zeros(n, cols, k, dtype=torch.int32) if k else None,
                         torch.zeros(n, cols, k, dtype=torch.float32) if k else None)
        for rows, pending in zip(ticket.rows, ticket.replies):
            part = pending.wait()
            out.busy_s = max(out.busy_s, part.busy_s)
            if not rows:
                continue
            index = torch.tensor(rows, dtype=torch.long)
            width = part.logprobs.shape[1]
            out.logprobs[index, :width] = part.logprobs
            if k:
                out.topk_ids[index, :width] = part.topk_ids
                out.topk_logprobs[index, :width] = part.topk_logprobs
        wait_all(ticket.sends)
        return out

    def close(self) -> None:
        sends = []
        for server in self.servers:
            sends += post_stop(self.group, server)
        wait_all(sends)


def _engine_reply(request: ScoreRequest, scores: list, seconds: float) -> ScoreReply:
    """A :class:`ScoreReply` from a vLLM teacher engine's scores of ``request``'s rows (from their second token): per
    row the log-probs, or with ``request.topk`` ``(log-probs, top-k ids, top-k log-probs)``
    (:meth:`rlad_megatron.rollout.vllm_engine.VLLMEngine.score_topk`)."""
    n, cols, k = len(request), request.width - 1, request.topk
    out = ScoreReply(torch.zeros(n, cols, dtype=torch.float32),
                     torch.zeros(n, cols, k, dtype=torch.int32) if k else None,
                     torch.zeros(n, cols, k, dtype=torch.float32) if k else None, busy_s=seconds)
    for i, row in enumerate(scores):
        values, ids, lps = row if k else (row, None, None)
        if not values:
            continue
        out.logprobs[i, :len(values)] = torch.tensor(values, dtype=torch.float32)
        if k:
            out.topk_ids[i, :len(values)] = torch.tensor(ids, dtype=torch.int32)
            out.topk_logprobs[i, :len(values)] = torch.tensor(lps, dtype=torch.float32)
    return out


class EngineScoreClient:
    """A vLLM teacher in its own process (a ``RemoteVLLMEngine`` serving the teacher). The engine serves one request
    at a time: later ones wait here, in order, and each goes out as soon as the one before is collected. Safe to call
    from two threads (the trainer's main thread and the rollout pipeline's arrival thread)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._queue: list[tuple[int, ScoreRequest]] = []  # submitted in order; the first is at the engine
        self._done: dict[int, ScoreReply] = {}
        self._next = 0

    def submit(self, request: ScoreRequest) -> int:
        with self._lock:
            ticket, self._next = self._next, self._next + 1
            self._queue.append((ticket, request))
            if len(self._queue) == 1:
                self._send(request)
        return ticket

    def _send(self, request: ScoreRequest) -> None:
        rows = [request.tokens[i, :int(n)].tolist() for i, n in enumerate(request.lengths)]
        self.engine.request_score(rows, [1] * len(rows), topk=request.topk)  # every position after the first token

    def collect(self, ticket: int) -> ScoreReply:
        with self._lock:
            while ticket not in self._done:
                if not self._queue:
                    raise RuntimeError(f"EngineScoreClient.collect: ticket {ticket} was never submitted")
                head, request = self._queue.pop(0)
                scores, seconds = self.engine.collect_score()
                self._done[head] = _engine_reply(request, scores, seconds)
                if self._queue:
                    self._send(self._queue[0][1])
            return self._done.pop(ticket)

    def close(self) -> None:
        self.engine.shutdown()
