"""The teacher pool's messages over a point-to-point process group: token ids to the pool, per-token log-probs (and,
where a loss needs them, the top-k) back.

    works = post_request(group, peer, ScoreRequest(tokens, lengths))          # client: non-blocking
    pending = post_reply_receive(group, peer, request)                        # client: receive buffers posted now
    request = receive_request(group, peer)                                    # pool: blocking (None: stop)
    works = post_reply(group, peer, ScoreReply(logprobs, busy_s=...))         # pool: non-blocking
    reply = pending.wait()                                                    # client

``group`` is any torch ``ProcessGroup`` object with ``send``/``recv`` (a standalone gloo group of the pool's bridge,
:mod:`rlad_megatron.pools.world`), used directly, so it needs no place in the default world. The client knows the
reply's shape from its own request, so it posts every receive at once: the pool's replies land in buffers that are
already waiting, and a reply never blocks on a client that is still computing. Each field travels under its own
tag; gloo matches messages per (peer, tag) in order, so requests and replies of successive rounds never mix.
"""
from __future__ import annotations

import dataclasses

import torch

STOP, SCORE = 0, 1
_REQ_HEADER, _REQ_TOKENS, _REQ_LENGTHS = 1, 2, 3
_REP_HEADER, _REP_LOGPROBS, _REP_TOPK_IDS, _REP_TOPK_LOGPROBS = 11, 12, 13, 14


@dataclasses.dataclass
class ScoreRequest:
    """Rows of token ids to score.

    tokens: ``[n, W]`` int32, each row's sequence (prompt + response) from position 0, right-padded with 0.
    lengths: ``[n]`` int64, each row's real token count (``1 <= lengths[i] <= W``; ``W >= 2``).
    topk: the top-k the reply should carry as well (0: log-probs of the given tokens only).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    topk: int = 0

    def __post_init__(self) -> None:
        self.tokens = self.tokens.to(torch.int32).contiguous()
        self.lengths = self.lengths.to(torch.int64).contiguous()
        if self.tokens.dim() != 2 or self.tokens.shape[1] < 2 or self.lengths.shape != (self.tokens.shape[0],):
            raise ValueError(f"ScoreRequest: tokens must be [n, W >= 2] and lengths [n], got {tuple(self.tokens.shape)}"
                             f" and {tuple(self.lengths.shape)}")
        if self.topk < 0:
            raise ValueError(f"ScoreRequest: topk must be >= 0, got {self.topk}")

    @classmethod
    def from_rows(cls, rows: list[list[int]], topk: int = 0) -> "ScoreRequest":
        """From token-id lists (each at least one token)."""
        width = max([2] + [len(r) for r in rows])
        tokens = torch.zeros(len(rows), width, dtype=torch.int32)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.tensor(row, dtype=torch.int32)
        return cls(tokens, torch.tensor([len(r) for r in rows], dtype=torch.int64), topk)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def width(self) -> int:
        return int(self.tokens.shape[1])

    def select(self, rows: list[int]) -> "ScoreRequest":
        """Rows ``rows`` only, trimmed to their longest (at least 2 columns)."""
        index = torch.tensor(rows, dtype=torch.long)
        lengths = self.lengths[index]
        width = max(2, int(lengths.max()) if len(rows) else 2)
        return ScoreRequest(self.tokens[index, :width], lengths, self.topk)

    def same_rows(self, other: "ScoreRequest") -> bool:
        """Whether both hold the same sequences (padding ignored)."""
        if len(self) != len(other) or not torch.equal(self.lengths, other.lengths):
            return False
        width = max(2, int(self.lengths.max()) if len(self) else 2)
        return torch.equal(self.tokens[:, :width], other.tokens[:, :width])


@dataclasses.dataclass
class ScoreReply:
    """The pool's answer to a :class:`ScoreRequest`.

    logprobs: ``[n, W-1]`` float32, ``log p(tokens[i, t+1] | tokens[i, :t+1])`` for ``t < lengths[i] - 1``, 0 beyond.
    topk_ids / topk_logprobs: ``[n, W-1, k]`` int32 / float32, the k most likely next tokens at each position and
    their log-probs (None when the request asked for no top-k).
    busy_s: seconds the pool computed on the round this request was part of (the step timeline's teacher busy time).
    """

    logprobs: torch.Tensor
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    busy_s: float = 0.0


def post_stop(group, peer: int) -> list:
    """Tell the pool's replica leader ``peer`` that this client sends nothing more (non-blocking)."""
    header = torch.tensor([STOP, 0, 0, 0], dtype=torch.int64)
    return [(group.send([header], peer, _REQ_HEADER), header)]


def post_request(group, peer: int, request: ScoreRequest) -> list:
    """Send ``request`` to ``peer`` without waiting; returns the pending sends (wait them, or keep them, with
    their tensors, until they completed)."""
    header = torch.tensor([SCORE, len(request), request.width, request.topk], dtype=torch.int64)
    works = [(group.send([header], peer, _REQ_HEADER), header)]
    if len(request):
        works.append((group.send([request.tokens], peer, _REQ_TOKENS), request.tokens))
        works.append((group.send([request.lengths], peer, _REQ_LENGTHS), request.lengths))
    return works


def receive_request(group, peer: int) -> ScoreRequest | None:
    """The next request of client ``peer`` (blocking), or None when it stopped."""
    header = torch.zeros(4, dtype=torch.int64)
    group.recv([header], peer, _REQ_HEADER).wait()
    kind, n, width, topk = header.tolist()
    if kind == STOP:
        return None
    if kind != SCORE:
        raise RuntimeError(f"teacher pool: unknown request kind {kind} from bridge rank {peer}")
    tokens = torch.zeros(n, width, dtype=torch.int32)
    lengths = torch.zeros(n, dtype=torch.int64)
    if n:
        works = [group.recv([tokens], peer, _REQ_TOKENS), group.recv([lengths], peer, _REQ_LENGTHS)]
        for work in works:
            work.wait()
    return ScoreRequest(tokens, lengths, topk)


def post_reply(group, peer: int, reply: ScoreReply) -> list:
    """Send ``reply`` to client ``peer`` without waiting (its receives are posted already)."""
    header = torch.tensor([reply.busy_s], dtype=torch.float64)
    tensors = [(header, _REP_HEADER), (reply.logprobs.to(torch.float32).contiguous(), _REP_LOGPROBS)]
    if reply.topk_ids is not None:
        tensors += [(reply.topk_ids.to(torch.int32).contiguous(), _REP_TOPK_IDS),
                    (reply.topk_logprobs.to(torch.float32).contiguous(), _REP_TOPK_LOGPROBS)]
    return [(group.send([t], peer, tag), t) for t, tag in tensors if t.numel()]


class PendingReply:
    """The receives of one reply, posted before the pool answers; :meth:`wait` returns the reply."""

    def __init__(self, group, peer: int, request: ScoreRequest) -> None:
        n, cols, k = len(request), request.width - 1, request.topk
        self.reply = ScoreReply(torch.zeros(n, cols, dtype=torch.float32),
                                torch.zeros(n, cols, k, dtype=torch.int32) if k else None,
                                torch.zeros(n, cols, k, dtype=torch.float32) if k else None)
        self._busy = torch.zeros(1, dtype=torch.float64)
        buffers = [(self._busy, _REP_HEADER), (self.reply.logprobs, _REP_LOGPROBS)]
        if k:
            buffers += [(self.reply.topk_ids, _REP_TOPK_IDS), (self.reply.topk_logprobs, _REP_TOPK_LOGPROBS)]
        self._works = [group.recv([t], peer, tag) for t, tag in buffers if t.numel()]

    def wait(self) -> ScoreReply:
        for work in self._works:
            work.wait()
        self._works = []
        self.reply.busy_s = float(self._busy)
        return self.reply


def post_reply_receive(group, peer: int, request: ScoreRequest) -> PendingReply:
    """Post the receives of ``request``'s reply from ``peer`` now (before the pool answers)."""
    return PendingReply(group, peer, request)


def wait_all(works: list) -> None:
    """Wait for sends returned by the ``post_*`` functions."""
    for work, _tensor in works:
        work.wait()
