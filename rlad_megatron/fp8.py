"""FP8 as a switch: ``FP8Settings`` -> megatron-core ``TransformerConfig`` fields, vLLM FP8 rollouts, and checks.

    kwargs = transformer_config_fp8_kwargs(cfg.fp8)          # {} when fp8 is off
    tc = transformer_config_for(arch, tp=2, pp=1, params_dtype=torch.bfloat16, **kwargs)
    model = build_gpt_model(arch, tc, te=True)                # FP8 runs through Transformer Engine layers only

    engine_kwargs = vllm_fp8_kwargs(cfg.fp8)                  # {"quantization": "fp8"} when rollout_fp8

Learner FP8 is Transformer Engine's: megatron-core wraps each TE layer in ``fp8_autocast`` with the recipe built
from these fields (``megatron.core.fp8_utils.get_fp8_recipe``). Nothing here imports Transformer Engine or vLLM at
module level; :func:`check_fp8_available` imports TE only when FP8 is asked for, and raises a ``ConfigError`` naming
what is missing (no CUDA device, no importable TE, too old a GPU). It runs at job start (:func:`check_run_hardware`,
before any model is built), not when a config is validated: validation is pure, so a config validates on a
login node. The FP8 names and cross-section rules live with the settings in :mod:`rlad_megatron.config`.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from packaging.version import Version

from rlad_megatron.config import FP8_FORMATS, FP8_RECIPES, ConfigError, FP8Settings, RunConfig, validate_fp8_run

__all__ = [
    "FP8_FORMATS", "FP8_RECIPES", "check_fp8_available", "check_run_hardware", "dequantized",
    "transformer_config_fp8_kwargs", "validate_fp8_run", "validate_fp8_settings", "vllm_fp8_kwargs",
]

#: Smallest CUDA compute capability with FP8 tensor cores per recipe (Ada/Hopper; MXFP8 is Blackwell's).
MIN_CAPABILITY: dict[str, tuple[int, int]] = {
    "delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0), "mxfp8": (10, 0),
}
#: Oldest Transformer Engine version that megatron-core 0.16 builds each recipe with (see fp8_utils.get_fp8_recipe).
MIN_TE_VERSION: dict[str, str] = {"delayed": "1.0", "tensorwise": "2.2", "blockwise": "2.3", "mxfp8": "2.1"}

#: Delayed scaling: amax history window and reduction, as NVIDIA's NeMo/Megatron FP8 recipes set them.
DELAYED_AMAX_HISTORY_LEN = 1024
DELAYED_AMAX_COMPUTE_ALGO = "max"


def validate_fp8_settings(settings: FP8Settings) -> FP8Settings:
    """Check the names and combinations in ``settings`` (no hardware needed; :meth:`FP8Settings.validate`).

    Raises ``ConfigError`` naming the ``fp8.<field>`` key and the accepted values. Returns ``settings``.
    """
    settings.validate()
    return settings


def check_run_hardware(config: RunConfig) -> None:
    """The job-start check of what a validated config asks of this machine: FP8 needs CUDA (and Transformer
    Engine for the learner). Raises ``ConfigError``; nothing to check when FP8 is off."""
    if config.fp8.enabled or config.fp8.rollout_fp8:
        check_fp8_available(config.fp8)


def transformer_config_fp8_kwargs(settings: FP8Settings, *, amax_history_len: int | None = None,
                                  amax_compute_algo: str | None = None, margin: int = 0,
                                  fp8_wgrad: bool = True) -> dict[str, Any]:
    """The ``megatron.core.transformer.TransformerConfig`` fields for ``settings`` ({} when FP8 is off).

    Keys: ``fp8`` ('e4m3' | 'hybrid'), ``fp8_recipe`` ('delayed' | 'tensorwise' | 'mxfp8' | 'blockwise'),
    ``fp8_param``, ``fp8_wgrad``, and for delayed scaling only ``fp8_margin``, ``fp8_amax_history_len``
    (default :data:`DELAYED_AMAX_HISTORY_LEN`) and ``fp8_amax_compute_algo`` ('max' | 'most_recent', default
    :data:`DELAYED_AMAX_COMPUTE_ALGO`); the other recipes compute scales from the current tensor or block and
    ignore them, so passing them for those is an error rather than a silent no-op.
    The model must be built with the Transformer Engine layer spec (``build_gpt_model(..., te=True)``).
    """
    validate_fp8_settings(settings)
    if not settings.enabled:
        return {}
    kwargs: dict[str, Any] = {
        "fp8": settings.format,
        "fp8_recipe": settings.recipe,
        "fp8_param": bool(settings.fp8_params),
        "fp8_wgrad": bool(fp8_wgrad),
    }
    if settings.recipe == "delayed":
        history = DELAYED_AMAX_HISTORY_LEN if amax_history_len is None else amax_history_len
        algo = DELAYED_AMAX_COMPUTE_ALGO if amax_compute_algo is None else amax_compute_algo
        if not isinstance(history, int) or isinstance(history, bool) or history < 1:
            raise ConfigError(f"FP8 delayed scaling: amax_history_len must be an integer >= 1, got {history!r}")
        if algo not in ("max", "most_recent"):
            raise ConfigError(f"FP8 delayed scaling: amax_compute_algo={algo!r}: choose 'max' or 'most_recent'")
        if not isinstance(margin, int) or isinstance(margin, bool) or margin < 0:
            raise ConfigError(f"FP8 delayed scaling: margin must be an integer >= 0, got {margin!r}")
        kwargs.update(fp8_margin=margin, fp8_amax_history_len=history, fp8_amax_compute_algo=algo)
    elif amax_history_len is not None or amax_compute_algo is not None or margin:
        raise ConfigError(f"fp8.recipe={settings.recipe!r} computes its scales from the current tensor: "
                          "amax_history_len / amax_compute_algo / margin apply to fp8.recipe='delayed' only")
    return kwargs


def vllm_fp8_kwargs(settings: FP8Settings) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(...)`` serving rollouts in FP8 ({} unless ``settings.rollout_fp8``).

    ``quantization="fp8"`` is vLLM's online dynamic FP8: the bf16 checkpoint is quantized per tensor when loaded
    (W8A8 on compute capability >= 8.9, weight-only FP8 via Marlin on older GPUs). The KV cache stays in the
    model dtype (an FP8 KV cache changes the sampled distribution further; not enabled here).
    """
    validate_fp8_settings(settings)
    return {"quantization": "fp8"} if settings.rollout_fp8 else {}


def check_fp8_available(settings: FP8Settings | None = None) -> None:
    """Raise ``ConfigError`` unless FP8 can run here: a CUDA GPU, an importable Transformer Engine, a new enough GPU.

    ``settings`` (optional) selects the recipe for the GPU-generation and TE-version checks and adds the FP8
    rollout check (vLLM FP8 needs CUDA). Every missing piece is named in one message, with what to do.
    """
    if settings is not None:
        validate_fp8_settings(settings)
    recipe = settings.recipe if settings is not None else "delayed"
    learner = settings is None or settings.enabled
    problems: list[str] = []
    cuda = torch.cuda.is_available()
    if not cuda:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
        problems.append(f"no CUDA GPU is visible (torch {torch.__version__}, built with {built}): "
                        "FP8 runs on GPUs only; set fp8.enabled=false (and fp8.rollout_fp8=false) or run on a GPU node")
    if learner:
        te_problem = _transformer_engine_problem(recipe)
        if te_problem:
            problems.append(te_problem)
        if cuda:
            major, minor = torch.cuda.get_device_capability()
            need = MIN_CAPABILITY[recipe]
            if (major, minor) < need:
                problems.append(f"fp8.recipe={recipe!r} needs a GPU of compute capability >= {need[0]}.{need[1]} "
                                f"({torch.cuda.get_device_name()} is {major}.{minor}): "
                                + ("use 'delayed' or 'tensorwise' before Blackwell" if recipe == "mxfp8"
                                   else "FP8 tensor cores start with Ada/Hopper"))
    if problems:
        raise ConfigError("fp8 is enabled but cannot run here: " + "; ".join(problems))


def _transformer_engine_problem(recipe: str) -> str | None:
    """Why Transformer Engine cannot give ``recipe`` here, or None when it can."""
    if importlib.util.find_spec("transformer_engine") is None:
        return ("transformer_engine is not installed: use the GPU image (docker/Dockerfile, NVIDIA's PyTorch "
                "container ships it) or `pip install transformer-engine[pytorch]` on a CUDA machine")
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception as err:  # a broken build (e.g. linked against another torch) raises anything
        return f"transformer_engine is installed but `import transformer_engine.pytorch` failed: {err}"

    version = getattr(importlib.import_module("transformer_engine"), "__version__", None)
    need = MIN_TE_VERSION[recipe]
    if version is not None and Version(version.split("+")[0]) < Version(need):
        return f"fp8.recipe={recipe!r} needs transformer_engine >= {need}, found {version}"
    return None


def dequantized(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as the plain tensor of the values it stands for.

    With ``fp8.fp8_params=true`` Transformer Engine keeps the student's linear weights as ``QuantizedTensor``
    subclasses (``Float8Tensor`` and its siblings): FP8 bytes plus a scale, whose ``dequantize()`` gives the values
    in the parameter's nominal dtype. Collectives and the HF layout conversion of the export and the weight sync
    need the values, not the bytes, so every parameter they read goes through here first. A plain tensor is returned
    as is; any tensor subclass that overrides ``dequantize`` counts as quantized, so the rule holds without importing
    Transformer Engine."""
    dequantize = getattr(type(tensor), "dequantize", None)
    if dequantize is None or dequantize is torch.Tensor.dequantize:
        return tensor
    plain = tensor.dequantize()
    if type(plain) is not torch.Tensor:
        raise TypeError(f"{type(tensor).__name__}.dequantize() returned a {type(plain).__name__}, not a plain "
                        "torch.Tensor: this quantized parameter type is not supported by the export / weight sync")
    return plain
