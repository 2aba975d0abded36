"""Masked reduction of per-token losses with GLOBAL denominators (docs/algorithm.md, "Loss aggregation").

Each mode is written as a sum over this micro-batch's valid tokens divided by a count of the whole global batch
(all micro-batches of all data-parallel ranks of one optimizer step), so the per-micro-batch scalars simply
add up to the full-batch loss, and so do their gradients:

- ``seq-mean-token-mean`` (paper Eq. 1): ``sum_i (sum_t l_it / n_i) / N_seqs``
- ``token-mean`` (DAPO): ``sum_it l_it / N_tokens``
- ``seq-mean-token-sum-norm`` (Dr. GRPO): ``sum_it l_it / (max_response_len * N_seqs)``

``n_i`` is response ``i``'s number of valid tokens (a response never straddles micro-batches), ``N_tokens`` and
``N_seqs`` the global numbers of valid tokens and of responses with at least one valid token. Build them with
:func:`local_denominators` per micro-batch, add them up (:meth:`Denominators.__add__`) and all-reduce them
over DP (:meth:`Denominators.as_tensor` / :meth:`Denominators.from_tensor`) before the first micro-batch.

Note for Megatron: the scalars must be SUMMED over micro-batches and DP ranks. Megatron's schedule divides each
micro-batch loss by the number of micro-batches and its DDP averages gradients over DP unless told otherwise;
undo that (multiply by ``num_microbatches * dp_size``) or turn it off (``calculate_per_token_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlad_megatron.config.loss import AGGREGATIONS


@dataclass(frozen=True)
class Denominators:
    """Global counts of one optimizer step's batch (summed over micro-batches and DP ranks)."""

    num_tokens: float
    """Valid (masked-in) response tokens."""
    num_seqs: float
    """Responses with at least one valid token."""

    def __add__(self, other: "Denominators") -> "Denominators":
        return Denominators(self.num_tokens + other.num_tokens, self.num_seqs + other.num_seqs)

    def as_tensor(self) -> Tensor:
        """``[2]`` float64 ``(num_tokens, num_seqs)``, for ``all_reduce(SUM)`` over the DP group."""
        return torch.tensor([self.num_tokens, self.num_seqs], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: Tensor) -> "Denominators":
        """Inverse of :meth:`as_tensor`."""
        if t.numel() != 2:
            raise ValueError(f"Denominators.from_tensor expects 2 values (num_tokens, num_seqs), got {t.numel()}")
        tokens, seqs = t.detach().double().cpu().tolist()
        return cls(float(tokens), float(seqs))


def as_bool_mask(mask: Tensor, like: Tensor | None = None) -> Tensor:
    """Validate a ``[B, T]`` loss mask (bool, or 0/1 numbers) and return it as bool."""
    if like is not None and mask.shape != like.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the per-token values have {tuple(like.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be bool or hold only 0 and 1 (it selects tokens; it does not weight them)")
    return mask != 0


def local_denominators(mask: Tensor) -> Denominators:
    """This micro-batch's counts from its ``[B, T]`` response mask (sum them to get the global ones)."""
    m = as_bool_mask(mask)
    if m.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(m.shape)}")
    lengths = m.sum(dim=-1)
    return Denominators(float(lengths.sum()), float((lengths > 0).sum()))


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    *,
    mode: str,
    denominators: Denominators,
    max_response_len: int | None = None,
) -> Tensor:
    """This micro-batch's share of the global-batch loss (a 0-d tensor; shares add up, see module docstring).

    Args:
        per_token: ``[B, T]`` per-token values (with gradient). Values at masked-out positions are ignored,
            even if they are NaN or inf.
        mask: ``[B, T]`` bool (or 0/1): True for response tokens that count.
        mode: one of ``seq-mean-token-mean``, ``token-mean``, ``seq-mean-token-sum-norm``.
        denominators: the global counts (:class:`Denominators`).
        max_response_len: the fixed normaliser of ``seq-mean-token-sum-norm``.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode must be one of {list(AGGREGATIONS)}, got {mode!r}")
    if per_token.dim() != 2:
        raise ValueError(f"per-token values must be [B, T], got shape {tuple(per_token.shape)}")
    m = as_bool_mask(mask, per_token)
    masked = torch.where(m, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    if mode == "token-mean":
        return masked.sum() / _positive("num_tokens", denominators.num_tokens)
    num_seqs = _positive("num_seqs", denominators.num_seqs)
    if mode == "seq-mean-token-mean":
        lengths = m.sum(dim=-1).clamp(min=1).to(per_token.dtype)
        return (masked.sum(dim=-1) / lengths).sum() / num_seqs
    if max_response_len is None or max_response_len <= 0:
        raise ValueError(
            f"aggregation 'seq-mean-token-sum-norm' needs max_response_len > 0, got {max_response_len!r}"
        )
    return masked.sum() / (float(max_response_len) * num_seqs)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(
            f"global denominator {name} must be > 0, got {value}; count the valid tokens/responses of the whole "
            "step's batch (local_denominators summed over micro-batches and DP ranks)"
        )
    return value
