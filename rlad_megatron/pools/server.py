"""The teacher pool's serving loop, on every rank of a teacher replica (SPMD: the replica's ranks score together).

    serve(scorer, bridge=group, clients=[0, 1], replica_group=group, leader=0, holder=3)

A round: the replica's leader receives one request from every client (the learner replicas' leaders, bridge ranks
``clients``), concatenates them and shares them with the replica's other ranks; every rank calls ``scorer`` (a
collective over the replica: tensor / pipeline / expert parallel); the rank that holds the result (``holder``, the
first rank of the last pipeline stage) shares it back; the leader cuts it per client and posts the replies with the
seconds the round took to compute (``busy_s``, the step timeline's teacher time). When every client sent a stop,
every rank of the replica returns.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.distributed as dist

from rlad_megatron.pools.wire import ScoreReply, ScoreRequest, post_reply, receive_request, wait_all

Scorer = Callable[[ScoreRequest], "ScoreReply | None"]
"""Scores a request on this rank's share of the replica: the reply on the rank holding the results (the last
pipeline stage), None elsewhere."""


def concat_requests(requests: list[ScoreRequest]) -> ScoreRequest:
    """The rows of ``requests`` one after the other, right-padded to the widest."""
    width = max(r.width for r in requests)
    tokens = torch.zeros(sum(len(r) for r in requests), width, dtype=torch.int32)
    row = 0
    for r in requests:
        tokens[row:row + len(r), :r.width] = r.tokens
        row += len(r)
    return ScoreRequest(tokens, torch.cat([r.lengths for r in requests]), requests[0].topk)


def _broadcast(t: torch.Tensor, src: int, group) -> torch.Tensor:
    """``src``'s ``t`` on every rank of ``group`` (through the group's device: a GPU for NCCL), on the CPU."""
    from rlad_megatron.device import for_collective

    moved = for_collective(t, group)
    dist.broadcast(moved, src=src, group=group)
    return moved.cpu()


def _share_request(request: ScoreRequest | None, group, src: int) -> ScoreRequest | None:
    """The leader's request (None: stop) on every rank of ``group``."""
    header = torch.zeros(3, dtype=torch.int64)
    if request is not None:
        header = torch.tensor([len(request), request.width, request.topk], dtype=torch.int64)
    elif dist.get_rank() == src:
        header[1] = -1
    if group is None or dist.get_world_size(group) == 1:
        return request
    n, width, topk = _broadcast(header, src, group).tolist()
    if width < 0:
        return None
    if request is None:
        request = ScoreRequest(torch.zeros(n, width, dtype=torch.int32), torch.zeros(n, dtype=torch.int64), topk)
    if n:
        request = ScoreRequest(_broadcast(request.tokens, src, group), _broadcast(request.lengths, src, group), topk)
    return request


def _share_reply(reply: ScoreReply | None, request: ScoreRequest, group, src: int) -> ScoreReply:
    """The holder's reply on every rank of ``group`` (shapes from the request)."""
    if group is None or dist.get_world_size(group) == 1:
        return reply
    n, cols, k = len(request), request.width - 1, request.topk
    if reply is None:
        reply = ScoreReply(torch.zeros(n, cols, dtype=torch.float32),
                           torch.zeros(n, cols, k, dtype=torch.int32) if k else None,
                           torch.zeros(n, cols, k, dtype=torch.float32) if k else None)
    if reply.logprobs.numel():
        reply.logprobs = _broadcast(reply.logprobs, src, group)
        if k:
            reply.topk_ids = _broadcast(reply.topk_ids, src, group)
            reply.topk_logprobs = _broadcast(reply.topk_logprobs, src, group)
    return reply


def serve(scorer: Scorer, *, bridge, clients: list[int], replica_group, leader: int, holder: int) -> int:
    """Serve rounds until every client stops; returns the number of rounds served. ``bridge`` is used on the
    leader only (``leader`` / ``holder``: ranks of the default group, members of ``replica_group``)."""
    me = dist.get_rank()
    rounds = 0
    sends: list = []
    while True:
        merged = None
        parts: list[ScoreRequest] = []
        if me == leader:
            received = [receive_request(bridge, c) for c in clients]
            stopped = [r is None for r in received]
            if any(stopped) and not all(stopped):
                raise RuntimeError(f"teacher pool: clients {[c for c, s in zip(clients, stopped) if s]} stopped "
                                   "while others still send requests")
            if not all(stopped):
                parts = received
                merged = concat_requests(parts)
        merged = _share_request(merged, replica_group, leader)
        if merged is None:
            wait_all(sends)
            return rounds
        start = time.perf_counter()
        reply = scorer(merged)
        reply = _share_reply(reply if me == holder else None, merged, replica_group, holder)
        busy = time.perf_counter() - start
        rounds += 1
        if me != leader:
            continue
        wait_all(sends)
        sends, row = [], 0
        for client, part in zip(clients, parts):
            n, cols = len(part), part.width - 1
            sends += post_reply(bridge, client, ScoreReply(
                reply.logprobs[row:row + n, :cols].contiguous(),
                None if reply.topk_ids is None else reply.topk_ids[row:row + n, :cols].contiguous(),
                None if reply.topk_logprobs is None else reply.topk_logprobs[row:row + n, :cols].contiguous(),
                busy_s=busy))
            row += n
