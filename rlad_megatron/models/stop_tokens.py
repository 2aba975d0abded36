"""Where a response ends: the tokens that stop generation, for every generation path (vLLM rollouts and
evaluation, ``transformers.generate`` in the examples).

Three sources, all of them counted:
- the tokenizer's ``eos_token_id``;
- ``generation_config.json``'s ``eos_token_id`` (an int or a list; Qwen3 instruct lists ``<|im_end|>`` and
  ``<|endoftext|>``);
- the chat template's end-of-turn token, found by rendering one assistant turn: Qwen3 *base* checkpoints list only
  ``<|endoftext|>`` as eos, yet their template closes every turn with ``<|im_end|>``; without it a model prompted
  through the template writes past the end of its turn until the token budget runs out.

The stop token a response ends with stays in the response (vLLM returns it in ``token_ids``), so the loss trains
the model to end its turn.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

_MARKER = "RLADENDOFTURNPROBE"


def end_of_turn_token_id(tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None) -> int | None:
    """The special token the chat template writes right after an assistant message, or None (no chat template,
    or a template that ends turns with plain text)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "1"}, {"role": "assistant", "content": _MARKER}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **dict(chat_template_kwargs or {}))
    except Exception:  # noqa: BLE001 - a template that cannot render an assistant turn names no end-of-turn token
        return None
    if _MARKER not in text:
        return None
    suffix = text[text.rindex(_MARKER) + len(_MARKER):]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if not ids:
        return None
    special = set(getattr(tokenizer, "all_special_ids", [])) | {
        i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)
    }
    return int(ids[0]) if ids[0] in special else None


def generation_config_eos_ids(model_dir: str | Path) -> list[int]:
    """``eos_token_id`` of ``model_dir/generation_config.json`` as a list (empty when the file or key is absent)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values]


def stop_token_ids(tokenizer: Any, model_dirs: Iterable[str | Path] = (),
                   chat_template_kwargs: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """Every token that ends a response: the tokenizer's eos, each model folder's generation-config eos list and
    the chat template's end-of-turn token (sorted, without repeats)."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    for folder in model_dirs:
        ids.update(generation_config_eos_ids(folder))
    turn_end = end_of_turn_token_id(tokenizer, chat_template_kwargs)
    if turn_end is not None:
        ids.add(turn_end)
    return tuple(sorted(ids))


def check_turn_ends_agree(student_tokenizer: Any, teacher_tokenizer: Any,
                          chat_template_kwargs: Mapping[str, Any] | None = None, *,
                          student: str = "student", teacher: str = "teacher") -> None:
    """Raise ``ValueError`` when the student's and the teacher's chat templates end an assistant turn with
    different tokens: the teacher would score (and the student learn) a turn end the teacher never writes."""
    s = end_of_turn_token_id(student_tokenizer, chat_template_kwargs)
    t = end_of_turn_token_id(teacher_tokenizer, chat_template_kwargs)
    if s == t:
        return

    def describe(tok: Any, token_id: int | None) -> str:
        if token_id is None:
            return "no end-of-turn token (no chat template, or one that ends turns with plain text)"
        return f"{tok.convert_ids_to_tokens(token_id)!r} (id {token_id})"

    raise ValueError(
        f"the student ({student}) ends an assistant turn with {describe(student_tokenizer, s)} but the teacher "
        f"({teacher}) with {describe(teacher_tokenizer, t)}: RLAD/KDRL score the student's tokens under the "
        "teacher, so both must share the tokenizer and the chat template's turn format; give the teacher the "
        "student's chat template (chat_template.jinja / tokenizer_config.json) or pick a matching pair"
    )
