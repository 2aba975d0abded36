"""The model shapes a launch checks and plans with: each model's own ``config.json``, never another model's.

    student, teacher = resolve_shapes(config, named={"student": "Qwen3-4B"}, declared=recipe_shapes)
    print(describe_shape("student", student))   # "student: Qwen3-4B, 4.02B parameters, dense, 36 layers, ..."

For each model the run uses (``model.student``; ``model.teacher`` when the loss needs it), in this order:

1. ``--student-shape NAME`` / ``--teacher-shape NAME`` (a name of :data:`KNOWN_SHAPES`): the shape of that model.
   If the folder is reachable too, its ``config.json`` must agree (a wrong name is refused, not planned).
2. ``<folder>/config.json`` when the folder is reachable from this machine (dense or MoE, through
   ``rlad_megatron.models.hf_config``): the real shape. ``locate`` maps a path of the job to one this machine
   sees (a container path through the container's mounts).
3. A recipe's own table shape, only for the recipe's own model path (``declared``): a recipe planned on a login
   node that does not see ``/models``.
4. Otherwise a clear error: the folder is not reachable here, name its shape or plan where the folder is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

from rlad_megatron.config import ConfigError, RunConfig, teacher_use
from rlad_megatron.memory_plan.arithmetic import param_counts
from rlad_megatron.placement import ModelShape

from recipes.paper import QWEN3_SHAPES

#: Shapes that ``--student-shape`` / ``--teacher-shape`` may name: the config.json of each Qwen3 checkpoint.
KNOWN_SHAPES: dict[str, ModelShape] = dict(QWEN3_SHAPES)
ROLES = ("student", "teacher")
#: The fields that make two shapes the same model for the plan (names aside).
_SAME_MODEL = ("num_layers", "num_heads", "num_kv_heads", "hidden_size", "intermediate_size", "head_dim_or_default",
               "vocab_size", "tie_word_embeddings", "num_experts", "moe_top_k", "moe_intermediate_size")


@dataclass(frozen=True)
class PlannedShape:
    """A model's shape and where it came from (printed with the plan)."""

    shape: ModelShape
    source: str
    """"<folder>/config.json", "--student-shape Qwen3-4B" or "the recipe's table"."""


def known_shape(name: str, flag: str) -> ModelShape:
    """The shape named ``name`` (``flag``: the option that named it, for the error)."""
    if name not in KNOWN_SHAPES:
        raise ConfigError(f"{flag} {name}: not a known shape; known: {', '.join(KNOWN_SHAPES)} (or plan where the "
                          "model folder is, so that its config.json is read)")
    return KNOWN_SHAPES[name]


def read_shape(folder: str, key: str) -> ModelShape | None:
    """The shape in ``folder``/config.json, None when there is none; unreadable or unsupported: ConfigError."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return None
    try:
        shape = ModelShape.from_hf_dir(folder, name=os.path.basename(os.path.normpath(folder)))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{key}={folder}: its config.json cannot be planned: {err}") from None
    return shape


def _differences(a: ModelShape, b: ModelShape) -> list[str]:
    return [f"{f} {getattr(a, f)} vs {getattr(b, f)}" for f in _SAME_MODEL if getattr(a, f) != getattr(b, f)]


def resolve_shape(role: str, path: str, *, named: str | None = None, declared: tuple[str, ModelShape] | None = None,
                  locate: Callable[[str], str | None] = lambda p: p) -> PlannedShape:
    """The shape of the ``role`` model at ``path`` (the module docstring's rules)."""
    key, flag = f"model.{role}", f"--{role}-shape"
    here = locate(path)
    real = read_shape(here, key) if here else None
    if named is not None:
        shape = known_shape(named, flag)
        if real is not None and _differences(real, shape):
            raise ConfigError(f"{flag} {named} does not match {key}={path} ({here}/config.json: "
                              f"{'; '.join(_differences(real, shape))}): drop {flag}, the folder's config.json is "
                              "read")
        return PlannedShape(shape, f"{flag} {named}")
    if real is not None:
        return PlannedShape(real, f"{here}/config.json")
    if declared is not None and os.path.normpath(declared[0]) == os.path.normpath(path):
        return PlannedShape(declared[1], "the recipe's table: the folder is not reachable here")
    where = f" (here: {here})" if here and here != path else ""
    raise ConfigError(f"{key}={path}: no config.json in that folder on this machine{where}, so its shape is unknown "
                      f"and the run cannot be checked or planned. Run this where the folder is reachable, or name the "
                      f"model's shape: {flag} NAME (known: {', '.join(KNOWN_SHAPES)})")


def teacher_needed(config: RunConfig) -> bool:
    """Whether the run loads the teacher (the loss scores with it or samples from it)."""
    return bool(config.model.teacher) and teacher_use(config.loss) != "none"


def resolve_shapes(config: RunConfig, *, named: Mapping[str, str | None] | None = None,
                   declared: Mapping[str, tuple[str, ModelShape] | None] | None = None,
                   locate: Callable[[str], str | None] = lambda p: p) -> tuple[PlannedShape, PlannedShape | None]:
    """(student, teacher or None) of ``config``. ``named``: ``{"student": "Qwen3-4B", ...}`` from the command line;
    ``declared``: a recipe's ``{"student": (its path, its shape), ...}``."""
    named, declared = dict(named or {}), dict(declared or {})
    if named.get("teacher") and not teacher_needed(config):
        raise ConfigError(f"--teacher-shape {named['teacher']}: this run loads no teacher (loss.algorithm="
                          f"{config.loss.algorithm}{'' if config.model.teacher else ', no model.teacher'})")
    student = resolve_shape("student", config.model.student, named=named.get("student"),
                            declared=declared.get("student"), locate=locate)
    teacher = None
    if teacher_needed(config):
        teacher = resolve_shape("teacher", config.model.teacher, named=named.get("teacher"),
                                declared=declared.get("teacher"), locate=locate)
    return student, teacher


def describe_shape(role: str, planned: PlannedShape) -> str:
    """One line: the model's real parameter count, dense or MoE, its size, and where the shape came from."""
    s = planned.shape
    counts = param_counts(s)
    kind = "dense"
    if s.is_moe:
        active = counts.total - s.num_layers * counts.layer_experts * (s.num_experts - s.moe_top_k) // s.num_experts
        kind = (f"MoE: {s.num_experts} experts x {s.moe_intermediate_size}, top-{s.moe_top_k}, "
                f"{_billions(active)} active per token")
    return (f"{role}: {s.name}, {_billions(counts.total)} parameters, {kind}, {s.num_layers} layers, hidden "
            f"{s.hidden_size}, vocab {s.vocab_size} (shape from {planned.source})")


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"
