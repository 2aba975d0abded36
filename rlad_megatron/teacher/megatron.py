"""A teacher that is a frozen Megatron GPTModel with the learner's TP/PP layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlad_megatron.device import rank_device
from rlad_megatron.learner.batching import MicroBatching
from rlad_megatron.learner.policy import MegatronPolicy
from rlad_megatron.learner.sequences import SequenceBatch
from rlad_megatron.models import load_teacher
from rlad_megatron.teacher.base import Teacher


class HostOffload:
    """Keep frozen modules' tensors in pinned host memory between uses (``teacher.offload``, GPU only).

    The weights never change, so they are copied to the host once; afterwards going to the host only drops the
    GPU copies (``tensor.data`` points at the pinned host copy) and coming back is one host-to-device copy per
    tensor. Parameters and buffers (RoPE tables) alike.
    """

    def __init__(self, modules: list[torch.nn.Module], device: torch.device) -> None:
        if device.type != "cuda":
            raise RuntimeError(f"teacher.offload moves the teacher between a GPU and host memory; this rank computes "
                               f"on {device}: set teacher.offload=false")
        self.device = device
        self.tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
        self.host: list[torch.Tensor] | None = None
        self.on_device = True

    def to_host(self) -> None:
        if not self.on_device:
            return
        if self.host is None:
            self.host = [torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True) for t in self.tensors]
            for h, t in zip(self.host, self.tensors):
                h.copy_(t.data, non_blocking=True)
            torch.cuda.synchronize(self.device)
        for h, t in zip(self.host, self.tensors):
            t.data = h
        self.on_device = False

    def to_device(self) -> None:
        if self.on_device:
            return
        for h, t in zip(self.host, self.tensors):
            t.data = h.to(self.device, non_blocking=True)
        torch.cuda.synchronize(self.device)
        self.on_device = True


class MegatronTeacher(Teacher):
    """Scores with ``policy`` (frozen chunks) in micro-batches through Megatron's schedule, cut as ``batching``
    says: a :class:`MicroBatching` (the forward token budget, packing) or an int, sequences per micro-batch.

    ``offload=True`` (GPU only): the chunks live in host memory between scoring passes and come to the rank's GPU
    for each pass (:class:`HostOffload`), leaving the GPU to the student and the engine the rest of the step."""

    def __init__(self, policy: MegatronPolicy, batching: "int | MicroBatching", *,
                 offload: bool = False) -> None:
        self.policy = policy
        self.batching = batching
        self.offload: HostOffload | None = None
        if offload:
            self.offload = HostOffload(policy.chunks, rank_device())
            self.offload.to_host()

    @classmethod
    def load(cls, hf_dir: str | Path, *, batching: "int | MicroBatching", params_dtype: torch.dtype,
             student_dir: str | Path | None = None, offload: bool = False, fused_logprobs: bool | str = "auto",
             **model_overrides: Any) -> "MegatronTeacher":
        """This rank's shard of the Hugging Face model in ``hf_dir``, frozen. With ``student_dir``, the tokenizers
        are checked to be compatible first. ``model_overrides`` go to the model's ``TransformerConfig``
        (``sequence_parallel``, uneven pipeline stages, ...). ``fused_logprobs``: score from the hidden states
        without logits (``trainer.fused_logprobs``)."""
        chunks, arch = load_teacher(hf_dir, student_dir=student_dir, params_dtype=params_dtype, **model_overrides)
        return cls(MegatronPolicy(chunks, arch.vocab_size, fused_logprobs=fused_logprobs), batching,
                   offload=offload)

    def token_logprobs(self, batch: SequenceBatch) -> torch.Tensor | None:
        return self._on_device(lambda: self.policy.token_logprobs(batch, self.batching))

    def token_topk(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The teacher's ``k`` most likely next tokens at every position, ``(log-probs [B, L-1, k], ids [B, L-1, k])``
        on the last pipeline stage (:meth:`MegatronPolicy.token_topk`); with the fused head no logits are built."""
        return self._on_device(lambda: self.policy.token_topk(batch, self.batching, k))

    def token_scores(self, batch: SequenceBatch, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """:meth:`token_logprobs` and :meth:`token_topk` from one forward pass."""
        out = self._on_device(lambda: self.policy.token_topk(batch, self.batching, k, with_logprobs=True))
        return None if out is None else (out[2], out[0], out[1])

    def _on_device(self, score):
        if self.offload is None:
            return score()
        self.offload.to_device()
        try:
            return score()
        finally:
            self.offload.to_host()
