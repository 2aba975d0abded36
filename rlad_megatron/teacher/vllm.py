"""A teacher served by a vLLM engine: it scores the sampled responses on the engine rank, and the result is shared
with the rest of the model-parallel group."""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.parallel import share_from_one
from rlad_megatron.teacher.base import Teacher


class Scorer(Protocol):
    """What :class:`rlad_megatron.rollout.vllm_engine.VLLMTeacherScorer` offers."""

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]: ...

    def score_topk(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int],
                   k: int) -> list[tuple[list[float], list[list[int]], list[list[float]]]]: ...

    def shutdown(self) -> None: ...


def response_spans(batch: SequenceBatch) -> tuple[list[list[int]], list[int]]:
    """Each row's sequence up to its last response token, and the length of its prompt (tokens before the first
    response token). A row's response tokens are ``tokens[1:]`` where ``loss_mask`` is set."""
    sequences, prompt_lens = [], []
    for row, mask in zip(batch.tokens.tolist(), batch.loss_mask):
        positions = mask.nonzero().flatten()
        first = int(positions[0]) + 1 if len(positions) else 1
        prompt_lens.append(first)
        sequences.append(row[: first + len(positions)])
    return sequences, prompt_lens


class VLLMTeacher(Teacher):
    """``scorer`` on the rank that holds the engine (None on the others); ``model_parallel_group`` shares its
    scores; the last pipeline stage scatters them into ``[B, L-1]`` (positions outside the mask stay 0)."""

    def __init__(self, scorer: Scorer | None, model_parallel_group) -> None:
        self.scorer = scorer
        self.group = model_parallel_group

    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

        scored = None
        if self.scorer is not None:
            scored = self.scorer.score(*response_spans(batch))
        scored = share_from_one(scored, self.group)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        out = torch.zeros_like(batch.engine_logprobs)
        for i, values in enumerate(scored):
            idx = batch.loss_mask[i].nonzero().flatten()
            out[i, idx] = torch.tensor(values, dtype=torch.float32, device=out.device)[: len(idx)]
        return out

    def token_topk(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        scores = self.token_scores(batch, k)
        return None if scores is None else scores[1:]

    def token_scores(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The sampled tokens' log-probs and the top-k at every response position from one vLLM pass (prompt
        log-probs with ``prompt_logprobs=k``); other positions hold 0 (ids 0)."""
        from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

        scored = None
        if self.scorer is not None:
            scored = self.scorer.score_topk(*response_spans(batch), k)
        scored = share_from_one(scored, self.group)
        if not ps.is_pipeline_last_stage(ignore_virtual=True):
            return None
        out = torch.zeros_like(batch.engine_logprobs)
        topk_lp = torch.zeros(*out.shape, k, dtype=torch.float32)
        topk_ids = torch.zeros(*out.shape, k, dtype=torch.int64)
        for i, (values, ids, lps) in enumerate(scored):
            idx = batch.loss_mask[i].nonzero().flatten()[: len(values)].cpu()
            out[i, idx] = torch.tensor(values, dtype=torch.float32)[: len(idx)].to(out.device)
            if len(idx):
                topk_ids[i, idx] = torch.tensor(ids, dtype=torch.int64)[: len(idx)]
                topk_lp[i, idx] = torch.tensor(lps, dtype=torch.float32)[: len(idx)]
        return out, topk_lp.to(out.device), topk_ids.to(out.device)

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.shutdown()
