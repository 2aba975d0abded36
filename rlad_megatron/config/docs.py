"""Every key of the run configuration with its default, type and meaning, read from the config dataclasses.

    rlad-megatron config --defaults            # all sections, as a commented YAML file
    rlad-megatron config --defaults loss       # one section

The meaning of a field is its attribute docstring (the string literal right below it in the class body, the
convention of this package) or, where a field prefers it, ``field(metadata={"doc": ...})``. The output is valid
YAML holding exactly the defaults, so it can be saved and edited as a run config.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import yaml

from rlad_megatron.config.run import RunConfig

HEADER = (
    "# rlad-megatron run configuration: every key with its default and meaning (`rlad-megatron config --defaults`).\n"
    "# Copy the keys you change into a YAML file for `train --config`, or pass them as section.key=value.\n"
)
WIDTH = 116


@dataclass(frozen=True)
class KeyDoc:
    key: str
    """Dotted key, e.g. ``loss.alpha``."""
    default: Any
    type_name: str
    doc: str


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` of a dataclass: attribute docstrings, overridden by ``metadata["doc"]``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first, so a subclass's docstring wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    for f in dataclasses.fields(cls):
        if "doc" in f.metadata:
            docs[f.name] = str(f.metadata["doc"])
    return docs


def type_name(annotation: Any) -> str:
    """A short readable type: ``float | None``, ``list[str]``, ``rlad|grpo|kdrl|sft`` for a Literal."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def iter_keys(cls: type = RunConfig, prefix: str = "") -> Iterator[KeyDoc]:
    """Every leaf key of ``cls`` (nested sections recursed), in declaration order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(annotation):
            yield from iter_keys(annotation, key + ".")
        else:
            yield KeyDoc(key, _default(f), type_name(annotation), docs.get(f.name, ""))


def _section_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    generated = doc.startswith(f"{cls.__name__}(")  # dataclasses' generated signature is no documentation
    return "" if generated else doc.split("\n\n")[0]


def _comment(text: str, indent: str) -> list[str]:
    text = " ".join(text.replace("``", "`").split())
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WIDTH - len(indent) - 2)]


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _render(cls: type, indent: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    concerns: dict[str, str] = getattr(cls, "CONCERNS", {})
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if f.name in concerns:  # a section whose keys are declared concern by concern (rollout)
            lines += ["", *_comment(f"--- {concerns[f.name]}", indent), ""]
        if dataclasses.is_dataclass(annotation):
            lines += _comment(docs.get(f.name, "") or _section_doc(annotation), indent)
            lines.append(f"{indent}{f.name}:")
            lines += _render(annotation, indent + "  ")
            continue
        lines += _comment(f"[{type_name(annotation)}] {docs.get(f.name, '')}", indent)
        lines += _item_keys(annotation, indent)
        lines.append(f"{indent}{f.name}: {_scalar(_default(f))}")
    return lines


def _item_keys(annotation: Any, indent: str) -> list[str]:
    """A list of sections (``teacher.teachers``): one comment line per key of an item, its type and meaning."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is not list or not args or not dataclasses.is_dataclass(args[0]):
        return []
    item, lines = args[0], []
    hints, docs = typing.get_type_hints(item), field_docs(item)
    for f in dataclasses.fields(item):
        lines += _comment(f"- {f.name} [{type_name(hints[f.name])}, default {_scalar(_default(f))}] "
                          f"{docs.get(f.name, '')}", indent)
    return lines


def render_defaults(section: str | None = None) -> str:
    """The defaults as commented YAML: all sections, or only ``section`` (e.g. ``"loss"``, ``"trainer.wandb"``)."""
    cls: type = RunConfig
    path = section.split(".") if section else []
    for part in path:
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            sections = [f.name for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))]
            raise KeyError(f"no config section {section!r}; sections: {sections}")
        cls = hints[part]
    lines = [HEADER]
    indent = ""
    for depth, part in enumerate(path):
        lines.append(f"{'  ' * depth}{part}:")
        indent = "  " * (depth + 1)
    if not path:
        for f in dataclasses.fields(RunConfig):  # a blank line and the section's own description between sections
            annotation = typing.get_type_hints(RunConfig)[f.name]
            lines.append("")
            lines += _comment(_section_doc(annotation), "")
            lines.append(f"{f.name}:")
            lines += _render(annotation, "  ")
    else:
        lines += _render(cls, indent)
    return "\n".join(line for line in lines if line != "# ") + "\n"
