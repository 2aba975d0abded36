"""A character-level tokenizer (1 character = 1 token) for the CPU demo and the tiny test models.

It is a real ``transformers.PreTrainedTokenizerFast`` (built with the ``tokenizers`` library), so that the learner,
vLLM and the data pipeline treat it exactly like a hub tokenizer: it saves with ``save_pretrained`` and reloads with
``AutoTokenizer.from_pretrained``.

Vocabulary (ids are stable; other modules and saved checkpoints depend on them):
    0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, 3 ``<unk>``, then :data:`CHARS` in order.
The post-processor prepends ``<bos>`` to every encoded text (``add_special_tokens=True``). No chat template is set:
tasks use their plain prompt template with this tokenizer. Characters outside the alphabet map to ``<unk>``.
"""
from __future__ import annotations

import os

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)

#: The character alphabet after the specials (ids 4..). Covers the arithmetic demo, K&K prompts, their formal
#: statements (``~ & | -> <->``), CoT text and ``\boxed{...}`` math answers. Do not reorder: ids are part of the
#: saved tokenizer and of every checkpoint trained with it; append new characters at the end only.
CHARS: str = (
    "0123456789"
    "+-*/=()<>.,:;?!"
    " \n"
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "#'\"[]{}\\_^|&~%$@\t"
)


def char_vocab(size: int | None = None) -> dict[str, int]:
    """The token -> id map: specials first, then :data:`CHARS`; with ``size``, then filler characters (code points
    from U+4E00 on, surrogates and noncharacters skipped) up to ``size`` tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        if ch in vocab:
            raise AssertionError(f"duplicate character {ch!r} in CHARS")
        vocab[ch] = len(vocab)
    if size is not None:
        if size < len(vocab):
            raise ValueError(f"size={size} is smaller than the {len(vocab)} characters and specials")
        code = 0x4E00
        while len(vocab) < size:
            if not (0xD800 <= code <= 0xDFFF or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE):
                vocab.setdefault(chr(code), len(vocab))
            code += 1
    return vocab


def build_char_tokenizer(out_dir: str | None = None, size: int | None = None) -> PreTrainedTokenizerFast:
    """Build the character tokenizer; when ``out_dir`` is given, also ``save_pretrained(out_dir)``. ``size``: a
    vocabulary of that many tokens (a real model's, e.g. Qwen3's 151,936), the extra ones single filler characters
    after the alphabet (the alphabet's ids are unchanged), so that every id a model of that size samples decodes.

    ``tokenizer("12+3=")["input_ids"]`` is ``[1, <one id per character>]`` (``<bos>`` first, no ``<eos>``);
    ``tokenizer.decode(ids, skip_special_tokens=True)`` gives the text back exactly.
    """
    vocab = char_vocab(size)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character (newlines included) is its own pre-token; WordLevel then maps it to its id.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # spaces before punctuation are real characters here
        model_max_length=1 << 20,
    )
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
    return hf
