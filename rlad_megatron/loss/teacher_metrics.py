"""Per-teacher metrics of a run with several teachers (``teacher.teachers``), each over the response tokens of the
prompts routed to that teacher:

- ``teacher/<name>/kl``: the mean k3 estimate of KL(student || teacher) at the sampled tokens (what the loss's
  ``kl/teacher_k3`` is for all teachers together);
- ``teacher/<name>/agreement``: the fraction of response tokens the teacher gives probability > 1/2, i.e. the
  sampled token is certainly the teacher's own top choice (a lower bound of "the sampled token is the teacher's
  argmax", which would need the teacher's whole distribution).

The share of prompts routed to each teacher (``teacher/<name>/share``) is counted from the batch's routes
(:func:`route_shares`), not from tokens.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from rlad_megatron.loss.aggregation import as_bool_mask
from rlad_megatron.loss.metrics import Stat, fraction_stat, mean_stat
from rlad_megatron.loss.surrogates import kl_estimate

#: The teacher's probability of the sampled token above which it counts as agreeing (its top choice).
AGREEMENT_PROBABILITY = 0.5


def per_teacher_stats(names: Sequence[str], teacher_index: Tensor, logprobs: Tensor, teacher_logprobs: Tensor,
                      mask: Tensor) -> dict[str, Stat]:
    """``teacher/<name>/kl`` and ``teacher/<name>/agreement`` of one micro-batch for every teacher of ``names``
    (every name, so that every rank adds the same metrics; a teacher with no tokens adds a zero count).

    ``teacher_index``: ``[B]`` long, each response's teacher; ``logprobs`` / ``teacher_logprobs``: ``[B, T]`` the
    student's and the teacher's log-probs of the sampled tokens; ``mask``: ``[B, T]`` the tokens that count."""
    m = as_bool_mask(mask, logprobs)
    k3 = kl_estimate(logprobs.detach(), teacher_logprobs.detach(), "k3")
    agree = teacher_logprobs.detach() > math.log(AGREEMENT_PROBABILITY)
    index = teacher_index.to(m.device)
    out: dict[str, Stat] = {}
    for i, name in enumerate(names):
        rows = m & (index == i).unsqueeze(-1)
        out[f"teacher/{name}/kl"] = mean_stat(k3, rows)
        out[f"teacher/{name}/agreement"] = fraction_stat(agree, rows)
    return out


def route_shares(names: Sequence[str], teacher_index: Tensor, group_size: int) -> dict[str, float]:
    """``teacher/<name>/share``: the fraction of this batch's prompts routed to each teacher (every response of a
    prompt has its prompt's teacher; rows are ``group_size`` responses per prompt)."""
    prompts = teacher_index.reshape(-1, group_size)[:, 0]
    total = max(1, prompts.numel())
    return {f"teacher/{name}/share": float((prompts == i).sum()) / total for i, name in enumerate(names)}
