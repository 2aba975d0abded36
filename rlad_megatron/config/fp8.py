"""``fp8``: FP8 training through Transformer Engine and FP8 rollouts. Names and combinations only: whether this
machine can run FP8 is checked when the job starts (:func:`rlad_megatron.fp8.check_run_hardware`)."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from rlad_megatron.config.validators import ConfigError

FP8Format = Literal["e4m3", "hybrid"]
FP8_FORMATS: tuple[str, ...] = typing.get_args(FP8Format)
"""megatron-core's ``TransformerConfig.fp8`` values: all-e4m3, or e4m3 forward with e5m2 gradients."""

FP8Recipe = Literal["delayed", "tensorwise", "mxfp8", "blockwise"]
FP8_RECIPES: tuple[str, ...] = typing.get_args(FP8Recipe)
"""megatron-core's ``Fp8Recipe`` names we expose ('custom' needs a quantizer factory: not exposed)."""


@dataclass
class FP8Settings:
    """FP8 training and FP8 rollouts (GPU + Transformer Engine)."""

    enabled: bool = False
    """FP8 training through Transformer Engine (GPU only; a clear error elsewhere)."""
    format: FP8Format = "hybrid"
    """"e4m3" or "hybrid" (e4m3 forward, e5m2 backward)."""
    recipe: FP8Recipe = "delayed"
    """Scaling recipe: "delayed", "tensorwise", "mxfp8" or "blockwise"."""
    fp8_params: bool = False
    """Keep parameters in FP8 (saves memory; needs the distributed optimizer)."""
    rollout_fp8: bool = False
    """Serve rollouts from vLLM with FP8 weights."""

    def validate(self) -> None:
        """Names and combinations only: whether FP8 can run on this machine is checked at job start
        (:func:`rlad_megatron.fp8.check_fp8_available`), so a config validates on a login node or a laptop."""
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"fp8.enabled must be true or false, got {self.enabled!r}")
        if self.format not in FP8_FORMATS:
            raise ConfigError(f"fp8.format={self.format!r}: choose one of {list(FP8_FORMATS)} "
                              "('hybrid' = e4m3 forward, e5m2 gradients)")
        if self.recipe not in FP8_RECIPES:
            raise ConfigError(f"fp8.recipe={self.recipe!r}: choose one of {list(FP8_RECIPES)}")
        if self.fp8_params and not self.enabled:
            raise ConfigError("fp8.fp8_params=true keeps weights in FP8 and needs fp8.enabled=true")
