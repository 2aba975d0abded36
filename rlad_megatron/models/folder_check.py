"""Is this a Hugging Face model folder we can load? Checked before any process group or engine starts, so a wrong
path is one line naming the folder and what is missing, not a hub lookup followed by a traceback.

rlad-megatron reads models from local folders (config.json, safetensors, tokenizer). A value that looks like a hub
id (``Qwen/Qwen3-1.7B``) is looked up on the hub only where the caller allows downloads (``eval --allow-download``);
anywhere else a missing folder is reported missing (a run config's paths are absolute by then:
``rlad_megatron/config/paths.py``), with the ``hf download`` command that fills it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelFolderError(ValueError):
    """The folder is missing or not a loadable Hugging Face model; the message names it and what is missing."""


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/", "~"))


def check_model_folder(path: str | Path, what: str, *, allow_download: bool = False, tokenizer: bool = True) -> None:
    """Raise :class:`ModelFolderError` unless ``path`` is a complete HF model folder (``what`` names the setting,
    e.g. ``model.student``). With ``allow_download``, a hub id that is not a local path is accepted as is."""
    text = str(path)
    folder = Path(text).expanduser()
    if not text:
        raise ModelFolderError(f"{what}: empty; give a Hugging Face model folder")
    if not folder.exists():
        if allow_download and looks_like_hub_id(text):
            return
        where = "" if folder.is_absolute() else f" ({folder.absolute()})"
        hint = (f"; models are read from local folders: to fetch a hub model into it, "
                f"hf download ORG/NAME --local-dir {folder.absolute()}")
        if looks_like_hub_id(text) and not what.startswith("model."):
            hint += f", or add --allow-download to read the hub model {text}"
        raise ModelFolderError(f"{what}={text}: no such folder{where}{hint}")
    if not folder.is_dir():
        raise ModelFolderError(f"{what}={text} is a file; give the model's folder (with config.json)")
    missing = []
    config = folder / "config.json"
    if not config.is_file():
        missing.append("config.json")
    else:
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise ModelFolderError(f"{what}={text}: {config} is not valid JSON ({err})") from None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ModelFolderError(f"{what}={text}: {index} is not a safetensors index ({err})") from None
        missing += [f"{name} (listed in {index.name})" for name in shards if not (folder / name).is_file()]
    elif not (folder / "model.safetensors").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json with its shards)")
    if tokenizer and not any((folder / name).is_file() for name in TOKENIZER_MARKERS):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_MARKERS)})")
    if missing:
        raise ModelFolderError(f"{what}={text} is not a complete Hugging Face model folder: missing "
                               f"{', '.join(missing)}")
