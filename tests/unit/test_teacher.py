"""The teacher side without engines: which teacher a run needs (one rule), and the vLLM teacher's unpacking of a
padded batch back into the sequences it scores."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.config import ConfigError, RunConfig, load_run_config, teacher_use
from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences
from rlad_megatron.loss import LossConfig, required_inputs
from rlad_megatron.teacher.vllm import response_spans


@pytest.mark.parametrize("algorithm, use", [("rlad", "logprobs"), ("kdrl", "logprobs"), ("sft", "samples"),
                                            ("grpo", "none")])
def test_teacher_use_follows_the_loss_inputs(algorithm: str, use: str) -> None:
    config = RunConfig(loss=LossConfig(algorithm=algorithm))
    assert teacher_use(config.loss) == use
    assert ("teacher_logprobs" in required_inputs(config.loss)) == (use == "logprobs")
    base = ["model.student=/s", "data.train_files=a.jsonl", f"loss.algorithm={algorithm}"]
    if use == "none":
        assert load_run_config(None, base).model.teacher is None
    else:  # sft needs the teacher too: the engine samples from it
        with pytest.raises(ConfigError, match=f"loss.algorithm='{algorithm}' needs model.teacher"):
            load_run_config(None, base)


def test_response_spans_recover_each_sequence_and_prompt_length() -> None:
    prompts, responses = [[1, 5, 6], [1, 7], [1, 8, 9, 10]], [[11, 12], [13, 14, 15, 16], []]
    tokens, mask, engine = pack_sequences(prompts, responses, [[0.0] * len(r) for r in responses], pad_id=0,
                                          pad_to_multiple=8)
    n = len(prompts)
    batch = SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.zeros(n), rewards=torch.zeros(n),
                          correct=torch.zeros(n, dtype=torch.bool), engine_logprobs=engine)
    sequences, prompt_lens = response_spans(batch)
    assert prompt_lens[:2] == [3, 2]
    assert sequences[:2] == [p + r for p, r in zip(prompts[:2], responses[:2])]
    assert len(sequences[2]) == prompt_lens[2]  # no response: nothing after the prompt position is scored


@pytest.mark.parametrize("prompt_token_rank", [2, 7, 40])
def test_topk_of_a_vllm_prompt_position_is_the_plain_topk(prompt_token_rank: int) -> None:
    """vLLM's prompt log-probs of one position hold its top-k (ranks 1..k) and the prompt's own token with its true
    rank (k or k + 1 entries, by id, in no useful order): the k of them are the plain top-k, sorted."""
    from rlad_megatron.rollout.vllm_engine import topk_of_position

    k = 5
    logp = torch.log_softmax(torch.randn(50, generator=torch.Generator().manual_seed(prompt_token_rank),
                                         dtype=torch.float64), dim=-1)
    order = logp.argsort(descending=True)
    entries = {int(tok): (float(logp[tok]), r + 1) for r, tok in enumerate(order[:k].tolist())}
    prompt_token = int(order[prompt_token_rank - 1])
    entries[prompt_token] = (float(logp[prompt_token]), prompt_token_rank)  # vLLM: a top-k entry overwrites it
    entries = dict(sorted(entries.items()))
    assert len(entries) == (k if prompt_token_rank <= k else k + 1)
    ids, lps = topk_of_position(entries, k)
    want = logp.topk(k)
    assert ids == want.indices.tolist() and lps == want.values.tolist()
    with pytest.raises(ValueError, match="fewer than k=6"):
        topk_of_position(entries if prompt_token_rank <= k else dict(list(entries.items())[:5]), 6)
