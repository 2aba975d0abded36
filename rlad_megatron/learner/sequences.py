"""The learner's batch: prompt + response token ids packed into right-padded tensors.

Position ``t`` of every ``[B, L-1]`` per-token tensor is the prediction of ``tokens[:, t + 1]`` from the prefix up to
``t``; ``loss_mask`` is True where that target is a response token (the prompt and the padding never count).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch


@dataclasses.dataclass
class SequenceBatch:
    """This data-parallel rank's sequences for one step (identical on every rank of its model-parallel group).

    tokens: ``[B, L]`` long, prompt then response, right-padded with ``pad_id``.
    loss_mask: ``[B, L-1]`` bool, True where the target ``tokens[:, t+1]`` is a response token.
    advantages: ``[B]`` float32, one per response (GRPO group-normalised).
    rewards: ``[B]`` float32.
    correct: ``[B]`` bool, the verifier's verdict.
    engine_logprobs: ``[B, L-1]`` float32, the rollout engine's log-prob of each response token (0 elsewhere).
    old_logprobs / teacher_logprobs / ref_logprobs: ``[B, L-1]`` float32 when computed (last pipeline stage
    only), else None.
    teacher_topk_ids / teacher_topk_logprobs: ``[B, L-1, k]`` int32 global token ids / float32 log-probs, the
    teacher's ``k`` most likely next tokens at every position, sorted by decreasing probability (``loss.topk_kl``;
    only response positions are meaningful, every id is a valid one), else None. Per-token tensors like the above:
    they travel with their tokens through data-parallel balancing, micro-batching and packing.
    lengths: ``[B]`` long, each sequence's real token count (prompt + response, no padding); None: every row
    counts as ``L`` long (token-budget micro-batches then save nothing).
    mini_batch: ``[B]`` long, the global mini-batch each sequence belongs to, when the step's sequences were
    rebalanced over data-parallel ranks (``learner.batching.balance_over_data_parallel``); None: mini-batch
    ``u`` is every ``updates``-th prompt group of this rank, as the trainer assigns it.
    teacher_pass_rate: ``[B]`` float64, the teacher's pass rate on each response's prompt (``loss.teacher_trust``),
    else None.
    teacher_index: ``[B]`` long, the teacher each response's prompt is routed to (several teachers), else None.
    """

    tokens: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    rewards: torch.Tensor
    correct: torch.Tensor
    engine_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    teacher_topk_ids: torch.Tensor | None = None
    teacher_topk_logprobs: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    mini_batch: torch.Tensor | None = None
    teacher_pass_rate: torch.Tensor | None = None
    teacher_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, index: torch.Tensor | slice) -> "SequenceBatch":
        """Rows ``index`` of every tensor (a mini-batch or micro-batch)."""
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[f.name] = None if value is None else value[index]
        return SequenceBatch(**values)

    def sequence_lengths(self) -> torch.Tensor:
        """``[B]`` long: the real token count of every row (``lengths``, or the full width when unknown)."""
        if self.lengths is not None:
            return self.lengths.long()
        return torch.full((len(self),), self.tokens.shape[1], dtype=torch.long)

    def to(self, device: torch.device | str) -> "SequenceBatch":
        """Every tensor on ``device`` (a no-op for tensors already there)."""
        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values[f.name] = None if value is None else value.to(device)
        return SequenceBatch(**values)


def default_pad_multiple() -> int:
    """What sequence lengths are rounded up to: 8 with CUDA (tensor-core friendly GEMM shapes, fewer distinct
    shapes for the caching allocator), 1 on CPU, where no kernel prefers such shapes and every padded column is
    compute thrown away: on workload W1 (prompt 9 + 32 new tokens) 48 instead of 41 columns made the teacher
    forward and the training step ~10% slower (``bench/step.py``, issue 10)."""
    return 8 if torch.cuda.is_available() else 1


def pack_sequences(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    response_logprobs: Sequence[Sequence[float]],
    *,
    pad_id: int,
    pad_to_multiple: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [B, L], loss_mask [B, L-1], engine_logprobs [B, L-1])`` from per-sequence id lists.

    ``L`` is the longest prompt + response rounded up to ``pad_to_multiple`` (default: ``default_pad_multiple()``).
    Right padding never changes the values at real positions (causal attention), only the cost.
    """
    if pad_to_multiple is None:
        pad_to_multiple = default_pad_multiple()
    if not (len(prompts) == len(responses) == len(response_logprobs)):
        raise ValueError("pack_sequences: prompts, responses and response_logprobs must have the same length")
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    length = -(-longest // pad_to_multiple) * pad_to_multiple
    batch = len(prompts)
    tokens = torch.full((batch, length), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, length - 1, dtype=torch.bool)
    engine = torch.zeros(batch, length - 1, dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, response_logprobs)):
        if len(lp) != len(r):
            raise ValueError(f"sequence {i}: {len(r)} response tokens but {len(lp)} engine log-probs")
        n_p, n_r = len(p), len(r)
        tokens[i, :n_p] = torch.tensor(list(p), dtype=torch.long)
        if n_r:
            tokens[i, n_p:n_p + n_r] = torch.tensor(list(r), dtype=torch.long)
            # target tokens[t+1] is response token j when t + 1 = n_p + j
            mask[i, n_p - 1:n_p - 1 + n_r] = True
            engine[i, n_p - 1:n_p - 1 + n_r] = torch.tensor(list(lp), dtype=torch.float32)
    return tokens, mask, engine
