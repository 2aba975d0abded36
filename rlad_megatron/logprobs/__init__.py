"""Token log-probs from (vocabulary-sharded) logits: the only home of vocabulary collectives.

- :func:`vocab_parallel_token_logprobs`: log-probs (and entropy) of target tokens with autograd, from this
  tensor-parallel rank's vocabulary shard; works with ``tp_group=None`` on one device.
- :func:`vocab_parallel_topk`: top-k tokens of the sharded distribution (no gradient).
- :func:`vocab_parallel_logprobs_at`: log-probs at given ids (a teacher's top-k) from the shard and the global
  log-sum-exp (:func:`vocab_parallel_logsumexp`), with autograd.
- :func:`fused_token_logprobs`, :func:`fused_topk`: log-probs (at one or K ids per position, with autograd),
  entropy and top-k from the last hidden states and the output layer's weight shard, chunk by chunk, without
  materialising the logits (forward or backward).
- :func:`token_logprobs_reference`, :func:`entropy_reference`: plain single-device references.
"""

from rlad_megatron.logprobs.at_ids import vocab_parallel_logprobs_at, vocab_parallel_logsumexp
from rlad_megatron.logprobs.fused import fused_token_logprobs, fused_topk
from rlad_megatron.logprobs.reference import entropy_reference, token_logprobs_reference
from rlad_megatron.logprobs.topk import vocab_parallel_topk
from rlad_megatron.logprobs.vocab_parallel import vocab_parallel_token_logprobs

__all__ = [
    "entropy_reference",
    "fused_token_logprobs",
    "fused_topk",
    "token_logprobs_reference",
    "vocab_parallel_logprobs_at",
    "vocab_parallel_logsumexp",
    "vocab_parallel_token_logprobs",
    "vocab_parallel_topk",
]
