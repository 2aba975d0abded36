"""A tiny Megatron GPTModel (local layer spec: RMSNorm, SwiGLU, GQA, RoPE) for tests of the parallel machinery."""
from __future__ import annotations

import torch

VOCAB = 128
SEQ = 16


def tiny_config(*, num_layers: int = 2, sequence_parallel: bool = False, **overrides):
    from megatron.core import parallel_state as ps
    from megatron.core.transformer import TransformerConfig

    fields = dict(
        num_layers=num_layers, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=torch.nn.functional.silu,
        add_bias_linear=False, hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
        params_dtype=torch.float32, pipeline_dtype=torch.float32,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        sequence_parallel=sequence_parallel,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def tiny_gpt(config, *, vocab_size: int = VOCAB, seed: int = 0, tied: bool = False):
    """Build the model for this rank's pipeline stage. Same ``seed`` on every rank gives the TP=1 weights sharded
    (megatron's CPU initialisation draws the full tensor and keeps this rank's slice). ``tied``: the output layer
    uses the input embedding's weight (a last stage under PP keeps a copy, synchronised by Megatron)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    torch.manual_seed(seed)
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=vocab_size,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=tied,
    )


def tiny_batch(batch_size: int = 4, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch_size, SEQ + 1), generator=g)
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "position_ids": torch.arange(SEQ).unsqueeze(0).expand(batch_size, -1).contiguous(),
        "attention_mask": torch.tril(torch.ones(1, 1, SEQ, SEQ)) < 0.5,
    }


def random_sequence_batch(size: int = 8, seed: int = 11):
    """``size`` sequences of random lengths (3..16 tokens) for the tiny GPT, right-padded with 0: a prompt of 1..3
    tokens each (the loss mask starts after it), random advantages, random per-token engine / teacher log-probs.
    Any misaligned per-token tensor changes a loss computed on it: the batch of the layout-equivalence tests."""
    from rlad_megatron.learner.sequences import SequenceBatch

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 17, (size,), generator=g)
    width = int(lengths.max())
    tokens = torch.randint(1, VOCAB, (size, width), generator=g)
    mask = torch.zeros(size, width - 1, dtype=torch.bool)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, n:] = 0
        prompt = 1 + i % 3
        mask[i, prompt - 1:n - 1] = True
    noise = torch.randn(size, width - 1, generator=g)
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.randn(size, generator=g),
                         rewards=torch.zeros(size), correct=torch.arange(size) % 3 == 0,
                         engine_logprobs=-5.0 + noise, teacher_logprobs=-4.5 - noise.abs(), lengths=lengths)
