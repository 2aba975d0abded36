"""The character tokenizer: stable ids, round trips, bos handling, save/reload through AutoTokenizer."""
from __future__ import annotations

from transformers import AutoTokenizer

from rlad_megatron.data.char_tokenizer import CHARS, build_char_tokenizer, char_vocab


def test_special_ids_are_fixed() -> None:
    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids("0") == 4
    assert len(tok) == 4 + len(CHARS) == len(char_vocab())
    assert tok.chat_template is None


def test_one_token_per_character_with_bos_prepended() -> None:
    tok = build_char_tokenizer()
    text = "12+345=\nAlice is a knight.  (A -> ~B) & {x}\\boxed#"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]


def test_unknown_characters_map_to_unk() -> None:
    tok = build_char_tokenizer()
    ids = tok("a€b", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.convert_tokens_to_ids("b")]


def test_eos_decodes_and_is_skipped() -> None:
    tok = build_char_tokenizer()
    ids = tok("7+8=", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids) == "7+8=<eos>"
    assert tok.decode(ids, skip_special_tokens=True) == "7+8="


def test_save_and_reload_with_autotokenizer(tmp_path) -> None:
    built = build_char_tokenizer(str(tmp_path / "tok"))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    text = "Who is a knight? 99 * 3 = 297 ; ok!"
    assert loaded(text)["input_ids"] == built(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.get_vocab() == built.get_vocab()


def test_a_real_vocabulary_size_keeps_the_alphabet_and_decodes_every_id():
    small, wide = build_char_tokenizer(), build_char_tokenizer(size=3000)
    assert len(wide) == 3000
    assert wide("12+3=")["input_ids"] == small("12+3=")["input_ids"]
    ids = list(range(len(small), 3000, 7))  # filler characters: one token each, back to the same ids
    assert wide(wide.decode(ids), add_special_tokens=False)["input_ids"] == ids
