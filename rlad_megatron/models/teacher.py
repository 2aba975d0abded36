"""The frozen teacher: a GPTModel loaded from its own HF checkpoint, forward only, sharing the student's tokenizer.

TRRD scores the student's sampled token ids with the teacher (one log-prob per token), so the two tokenizers must
map every id to the same token: :func:`check_tokenizer_compatible` refuses a mismatch before training starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rlad_megatron.models import load_hf_model
from rlad_megatron.models.hf_config import ModelArch, load_arch
from rlad_megatron.models.stop_tokens import end_of_turn_token_id


class TokenizerMismatchError(ValueError):
    """Student and teacher tokenizers differ in a way that would make teacher log-probs meaningless."""


_SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")


def check_tokenizer_compatible(student_dir: str | Path, teacher_dir: str | Path) -> None:
    """Raise :class:`TokenizerMismatchError` unless both tokenizers map the same tokens to the same ids, with the
    same special tokens, and both models' embeddings cover that vocabulary.

    The teachers' ``config.json`` ``vocab_size`` may differ from the student's (hub models pad embeddings
    differently); only ids the tokenizer can produce must agree.
    """
    from transformers import AutoTokenizer  # lazy: transformers is heavy (seconds)

    student = AutoTokenizer.from_pretrained(str(student_dir), trust_remote_code=False)
    teacher = AutoTokenizer.from_pretrained(str(teacher_dir), trust_remote_code=False)
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab) - set(t_vocab))[:5]
        only_t = sorted(set(t_vocab) - set(s_vocab))[:5]
        moved = sorted(k for k in set(s_vocab) & set(t_vocab) if s_vocab[k] != t_vocab[k])[:5]
        raise TokenizerMismatchError(
            f"student tokenizer ({student_dir}, {len(s_vocab)} tokens) and teacher tokenizer ({teacher_dir}, "
            f"{len(t_vocab)} tokens) differ: only in student {only_s}, only in teacher {only_t}, different ids "
            f"{moved}. The teacher scores the student's token ids, so both must use the same tokenizer."
        )

    turn_end = end_of_turn_token_id(student)
    for attr in _SPECIAL_ATTRS:
        s_tok, t_tok = getattr(student, attr), getattr(teacher, attr)
        if s_tok != t_tok and attr in ("eos_token", "pad_token") and turn_end is not None \
                and turn_end == end_of_turn_token_id(teacher):
            continue  # Qwen3 base (eos <|endoftext|>) and instruct (eos <|im_end|>): the same turns, both stop
        if s_tok != t_tok:
            raise TokenizerMismatchError(
                f"special token {attr} differs: student ({student_dir}) {s_tok!r} vs teacher ({teacher_dir}) "
                f"{t_tok!r}: use the same tokenizer files for both"
            )
    s_special, t_special = sorted(student.all_special_tokens), sorted(teacher.all_special_tokens)
    if s_special != t_special:
        raise TokenizerMismatchError(
            f"special tokens differ: student ({student_dir}) {s_special} vs teacher ({teacher_dir}) {t_special}"
        )
    needed = max(s_vocab.values()) + 1
    for who, path in (("student", student_dir), ("teacher", teacher_dir)):
        arch = load_arch(path)
        if arch.vocab_size < needed:
            raise TokenizerMismatchError(
                f"{who} model {path} has vocab_size {arch.vocab_size} < {needed} token ids of its tokenizer"
            )


def freeze(model_chunks: list[torch.nn.Module]) -> list[torch.nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter (the teacher gets no grads, no optimizer state)."""
    for chunk in model_chunks:
        chunk.eval()
        for p in chunk.parameters():
            p.requires_grad_(False)
    return model_chunks


def load_teacher(
    hf_dir: str | Path,
    *,
    student_dir: str | Path | None = None,
    params_dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> tuple[list[torch.nn.Module], ModelArch]:
    """Load the frozen teacher's chunks for this rank (same TP/PP layout as the student) from ``hf_dir``.

    With ``student_dir``, first checks the tokenizers are compatible (:func:`check_tokenizer_compatible`). The
    teacher may be deeper and wider than the student; never pass its parameters to an optimizer.
    """
    if student_dir is not None:
        check_tokenizer_compatible(student_dir, hf_dir)
    chunks, arch = load_hf_model(hf_dir, trainable=False, params_dtype=params_dtype, **config_overrides)
    return freeze(chunks), arch
