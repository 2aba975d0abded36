"""The learner's side of the probe check: token log-probs from a Megatron GPTModel (TP-sharded, one pipeline stage).

A plain no-grad forward for PP=1, used by the weight-sync tests and ``bench/weight_sync.py``. The trainer does not
use it: it passes its own callable built on the policy's forward schedule (any layout, pipeline parallelism
included: ``learner_probe`` in ``rlad_megatron/trainer/setup/components.py``).
"""
from __future__ import annotations

import torch

from rlad_megatron.device import rank_device
from rlad_megatron.learner.expert_parallel import expert_parallel_group
from rlad_megatron.logprobs import vocab_parallel_token_logprobs
from rlad_megatron.weight_sync.verify import LearnerLogprobs


def megatron_token_logprobs(model_chunks: list[torch.nn.Module], vocab_size: int) -> LearnerLogprobs:
    """A :data:`LearnerLogprobs` over ``model_chunks`` (PP=1; TP any). Collective over the TP group.

    Each sequence is run on its own (``[1, T]`` tokens, causal mask), the vocabulary-parallel log-prob kernel picks
    the log-prob of each next token from the ``[1, T, V/TP]`` logit shard, and the result is identical on all TP
    ranks. Columns at or beyond ``vocab_size`` (Megatron's TP padding) are excluded.
    """
    from megatron.core import parallel_state as ps  # lazy: megatron-core is heavy (seconds)

    if ps.get_pipeline_model_parallel_world_size() != 1 or len(model_chunks) != 1:
        raise ValueError(
            "megatron_token_logprobs handles one pipeline stage only; with pipeline parallelism pass the trainer's "
            "own learner_logprobs (built on its forward schedule) to SyncVerifier"
        )
    (model,) = model_chunks

    if expert_parallel_group(model_chunks) is not None:
        raise ValueError(
            "megatron_token_logprobs runs each sequence on its own, so the ranks of an expert-parallel group would "
            "send different token counts through the MoE dispatcher: at expert parallelism > 1 pass the trainer's "
            "learner_logprobs (MegatronPolicy.token_logprobs makes the shapes common over the EP group)"
        )
    device = rank_device()
    tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None

    def learner_logprobs(sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.no_grad():
                for seq, p in zip(sequences, prompt_lens):
                    tokens = torch.tensor([seq], dtype=torch.long, device=device)
                    t = tokens.shape[1]
                    positions = torch.arange(t, device=device).unsqueeze(0)
                    mask = torch.tril(torch.ones(1, 1, t, t, device=device)) < 0.5  # True = masked (future positions)
                    logits = model(tokens, positions, mask)  # [1, T, V/TP]
                    lps = vocab_parallel_token_logprobs(
                        logits[:, :-1].contiguous(), tokens[:, 1:], tp_group=tp_group, vocab_size=vocab_size
                    )  # [1, T-1]: lps[0, i] = log p(seq[i+1] | seq[:i+1])
                    out.append(lps[0, p - 1:].tolist())
        finally:
            model.train(was_training)
        return out

    return learner_logprobs
