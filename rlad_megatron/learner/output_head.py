"""The last pipeline stage's output head without logits: the GPTModel hands back its final hidden states and the
fused kernel (``rlad_megatron.logprobs.fused``) turns them into log-probs with the output layer's weight.

megatron-core's ``GPTModel.forward`` returns the decoder's output (after the final norm, ``[s, b, h]``, sharded on
``s`` under sequence parallelism) instead of logits when ``post_process`` is False, as on every pipeline stage
but the last; the decoder's final norm belongs to the decoder (``TransformerBlock``'s own ``post_process``), so it
still runs. :func:`hidden_states_out` clears the flag around one forward call and names the weight the output layer
would have used: the input embedding's when the embeddings are tied and this stage holds them (``pre_process``),
else ``output_layer.weight`` (Megatron keeps a last stage's tied copy in sync through the embedding group), exactly
as ``GPTModel._postprocess`` chooses. Nothing else of the forward changes: context parallelism, MoE layers, packed
(THD) rows and recomputation run as before.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import torch

@dataclasses.dataclass(frozen=True)
class OutputHead:
    """What the fused kernel needs of a model chunk's output layer."""

    weight: torch.Tensor
    """``[V/TP, H]``: this rank's vocabulary shard (the embedding when tied)."""
    sequence_parallel: bool
    """The hidden states come sharded on the sequence dimension (gathered by the kernel)."""
    main_grad: bool
    """Accumulate the weight's gradient into its ``main_grad`` (Megatron DDP's buffer, reduced after the last
    micro-batch: not with ``overlap_grad_reduce``, whose per-parameter hook needs a ``.grad``)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside wrappers (Megatron DDP, ...) that keep it as ``.module``."""
    while hasattr(model, "module"):
        model = model.module
    return model


def fused_unsupported(model: torch.nn.Module) -> str | None:
    """Why the fused head cannot replace this model's output layer (None: it can)."""
    gpt = unwrap(model)
    config = getattr(gpt, "config", None)
    if getattr(config, "mtp_num_layers", None):
        return "multi-token prediction layers (mtp_num_layers) compute their own logits"
    if getattr(gpt, "post_process", False) and not getattr(gpt, "parallel_output", True):
        return "the model gathers its logits over tensor parallelism (parallel_output=False)"
    if getattr(config, "defer_embedding_wgrad_compute", False):
        return "defer_embedding_wgrad_compute keeps the output layer's inputs for a later weight gradient"
    return None


def use_fused_logprobs(setting: Any, chunks: list[torch.nn.Module]) -> bool:
    """``trainer.fused_logprobs`` resolved for these model chunks: "auto" is on unless the model has something the
    fused head does not handle (then off); True refuses such a model; False is today's output layer + kernel."""
    if not (setting is True or setting is False or setting == "auto"):
        raise ValueError(f"trainer.fused_logprobs={setting!r}: choose auto, true or false")
    if setting is False:
        return False
    reasons = {r for r in (fused_unsupported(c) for c in chunks) if r}
    if reasons and setting is True:
        raise ValueError(f"trainer.fused_logprobs=true: {'; '.join(sorted(reasons))}; set trainer.fused_logprobs="
                         "auto or false")
    return not reasons


@contextlib.contextmanager
def hidden_states_out(model: torch.nn.Module) -> Iterator[OutputHead | None]:
    """Within the block ``model(...)`` returns the final hidden states ``[s(/TP), b, h]`` instead of logits;
    yields the chunk's :class:`OutputHead`, or None (and changes nothing) on a chunk without an output layer."""
    gpt = unwrap(model)
    if not getattr(gpt, "post_process", False):
        yield None
        return
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights \
        else gpt.output_layer.weight
    ddp_config = getattr(model, "ddp_config", None)
    head = OutputHead(weight=weight, sequence_parallel=bool(gpt.output_layer.sequence_parallel),
                      main_grad=not getattr(ddp_config, "overlap_grad_reduce", False))
    gpt.post_process = False
    try:
        yield head
    finally:
        gpt.post_process = True
