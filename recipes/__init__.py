"""NeMo-Run recipes for rlad-megatron: Python functions returning a :class:`Recipe` (config + layout).

    from recipes import get_recipe, recipe_names
    recipe = get_recipe("logic_qwen3_0p6b_grpo", max_response=2048)

Launching (``recipes.executors``) imports NeMo-Run; building and checking a recipe does not.
Command line: ``python -m recipes <name> [--executor local|slurm] [--dryrun] ... [key=value ...]``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from recipes.base import Recipe, config_overrides
from recipes.moe import math_qwen3_1p7b_from_30b_a3b
from recipes.paper import logic_qwen3_0p6b, logic_qwen3_1p7b, math_qwen3_1p7b_base, math_qwen3_8b_base
from recipes.quickstart import prepare_quickstart_assets, quickstart

_PAPER: dict[str, Callable[..., Recipe]] = {
    "logic_qwen3_0p6b": logic_qwen3_0p6b,
    "logic_qwen3_1p7b": logic_qwen3_1p7b,
    "math_qwen3_1p7b_base": math_qwen3_1p7b_base,
    "math_qwen3_8b_base": math_qwen3_8b_base,
}

#: Every recipe by name: the quickstart, each paper run (RLAD) and its ``_grpo`` / ``_kdrl`` baselines.
RECIPES: dict[str, Callable[..., Recipe]] = {"quickstart": quickstart}
for _name, _fn in _PAPER.items():
    RECIPES[_name] = _fn
    for _algo in ("grpo", "kdrl"):
        RECIPES[f"{_name}_{_algo}"] = functools.partial(_fn, algorithm=_algo)
#: A MoE teacher (issue 19): Qwen3-30B-A3B into a dense student, RLAD and the KDRL baseline (no GRPO: no teacher).
RECIPES["math_qwen3_1p7b_from_30b_a3b"] = math_qwen3_1p7b_from_30b_a3b
RECIPES["math_qwen3_1p7b_from_30b_a3b_kdrl"] = functools.partial(math_qwen3_1p7b_from_30b_a3b, algorithm="kdrl")
#: The same with the teacher in a pool of its own (issue 32): a second node of 8 GPUs at EP=8.
RECIPES["math_qwen3_1p7b_from_30b_a3b_pool"] = functools.partial(math_qwen3_1p7b_from_30b_a3b, teacher_pool=8,
                                                                teacher_ep=8)


def recipe_names() -> list[str]:
    """All recipe names (sorted)."""
    return sorted(RECIPES)


def get_recipe(name: str, **kwargs: Any) -> Recipe:
    """Build recipe ``name`` with its function's keyword arguments (an unknown name lists the known ones)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {', '.join(recipe_names())}")
    return RECIPES[name](**kwargs)


__all__ = ["RECIPES", "Recipe", "config_overrides", "get_recipe", "logic_qwen3_0p6b", "logic_qwen3_1p7b",
           "math_qwen3_1p7b_base", "math_qwen3_1p7b_from_30b_a3b", "math_qwen3_8b_base", "prepare_quickstart_assets", "quickstart", "recipe_names"]
