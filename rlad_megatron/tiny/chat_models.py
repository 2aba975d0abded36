"""Tiny local replicas of chat-checkpoint conventions, for tests: a Qwen3-style tokenizer and chat template
(``<|im_start|>``/``<|im_end|>`` turns, ``enable_thinking``), base vs instruct generation configs, and a scripted
"bigram" model whose greedy (and temperature-1) output is known token by token.

    tok = build_qwen3_style_tokenizer()                        # eos <|im_end|> (instruct)
    path = make_bigram_chat_model(tmp / "base", {"\\n": "5", "5": "<|im_end|>", "<|im_end|>": "x", "x": "x"},
                                  base=True)                   # eos <|endoftext|> only, like Qwen3-*-Base
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from rlad_megatron.tiny.hf_model import make_tiny_hf_model

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

#: The generation-prompt behaviour of Qwen3's template: a thinking turn by default, an empty think block (so the
#: model answers directly) with ``enable_thinking=False``.
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

#: Llama 3's turn format (a different end-of-turn token), for the student/teacher mismatch check.
LLAMA3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def build_qwen3_style_tokenizer(*, base: bool = False, template: str = QWEN3_STYLE_TEMPLATE) -> Any:
    """The char tokenizer plus Qwen3's special tokens and a Qwen3-style chat template. ``base``: eos is
    ``<|endoftext|>`` (Qwen3-*-Base), else ``<|im_end|>`` (instruct)."""
    from rlad_megatron.data.char_tokenizer import build_char_tokenizer  # lazy: it imports transformers

    tok = build_char_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, END_OF_TEXT, "<|start_header_id|>",
                                                          "<|end_header_id|>", "<|eot_id|>"]})
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])  # ordinary added tokens, as in Qwen3 (kept in decoded text)
    tok.eos_token = END_OF_TEXT if base else IM_END
    tok.chat_template = template
    return tok


def make_bigram_chat_model(out_dir: str | Path, next_token: Mapping[str, str], *, base: bool = False,
                           family: str = "qwen3", template: str = QWEN3_STYLE_TEMPLATE,
                           margin: float = 40.0) -> Path:
    """A tiny ``family`` checkpoint whose next token depends only on the current one: ``next_token[a] = b``
    (tokens as strings) with a logit margin ``margin`` over every other token (a certain choice even at
    temperature 1); unlisted tokens lead to ``<|endoftext|>``. Attention and MLP outputs are zero, so the residual
    stream is the current token's one-hot embedding. ``generation_config.json`` lists ``<|endoftext|>`` only
    (``base``) or ``[<|im_end|>, <|endoftext|>]`` as Qwen3 instruct checkpoints do."""
    tok = build_qwen3_style_tokenizer(base=base, template=template)
    vocab = len(tok)
    hidden = 64 * -(-vocab // 64)  # one-hot embeddings need hidden >= vocab; head_dim 64 suits vLLM's CPU kernels
    out = make_tiny_hf_model(out_dir, family, tokenizer=tok, num_layers=1, hidden_size=hidden,
                             intermediate_size=64, num_heads=hidden // 64, num_kv_heads=hidden // 64)
    path = out / "model.safetensors"
    tensors = load_file(path)
    ids = tok.convert_tokens_to_ids
    fallback = ids(END_OF_TEXT)
    table = {ids(a): ids(b) for a, b in next_token.items()}
    for name, value in tensors.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensors[name] = torch.zeros_like(value)
        elif "norm.weight" in name:
            tensors[name] = torch.ones_like(value)
    tensors["model.embed_tokens.weight"] = torch.eye(vocab, hidden)
    head = torch.zeros(vocab, hidden)
    for current in range(vocab):
        head[table.get(current, fallback), current] = margin / hidden ** 0.5  # the norm scales 1 to sqrt(hidden)
    tensors["lm_head.weight"] = head
    save_file(tensors, str(path), metadata={"format": "pt"})
    gen = json.loads((out / "generation_config.json").read_text())
    gen["eos_token_id"] = ids(END_OF_TEXT) if base else [ids(IM_END), ids(END_OF_TEXT)]
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out
