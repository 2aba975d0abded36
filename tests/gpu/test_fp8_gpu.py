"""FP8 on a GPU: a tiny GPTModel with the Transformer Engine layer spec trains a few steps in FP8 (each recipe this
GPU supports) and in BF16 from the same weights and data; the FP8 losses must track the BF16 ones within a
tolerance, differ from them (FP8 really engaged), and fall. Skipped without CUDA (conftest)."""
from __future__ import annotations

import math

import pytest
import torch

from rlad_megatron.config import FP8Settings

pytestmark = pytest.mark.gpu

STEPS = 6
REL_TOL = 0.05  # per-step |loss_fp8 - loss_bf16| / loss_bf16


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    # Every GEMM dimension a multiple of 16, as FP8 tensor cores need.
    return make_tiny_hf_model(tmp_path_factory.mktemp("fp8") / "llama", family="llama", num_layers=2,
                              hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, seed=0)


@pytest.fixture(scope="module")
def model_parallel():
    from rlad_megatron import parallel

    parallel.initialize_model_parallel(1, 1, seed=0)
    yield
    parallel.destroy_model_parallel()


def _train_losses(hf_dir, fp8_kwargs: dict) -> list[float]:
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.builder import use_transformer_engine

    assert use_transformer_engine(), "the TE layer spec must be in use for FP8"
    chunks, arch = load_hf_model(hf_dir, params_dtype=torch.bfloat16, **fp8_kwargs)
    model = chunks[0].cuda().train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (8, 65), generator=gen).cuda()  # 8 x 64 = 512 tokens per step
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = torch.arange(inputs.shape[1], device="cuda").unsqueeze(0).expand_as(inputs)
    losses = []
    for _ in range(STEPS):
        logits = model(input_ids=inputs, position_ids=positions, attention_mask=None)  # [b, s, V_padded]
        loss = torch.nn.functional.cross_entropy(logits[..., :arch.vocab_size].float().reshape(-1, arch.vocab_size),
                                                 targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _supported_recipes() -> list[str]:
    from rlad_megatron.fp8 import MIN_CAPABILITY

    if not torch.cuda.is_available():
        return ["delayed"]
    cap = torch.cuda.get_device_capability()
    return [r for r, need in MIN_CAPABILITY.items() if cap >= need]


def test_fp8_available_here():
    from rlad_megatron.fp8 import check_fp8_available

    check_fp8_available(FP8Settings(enabled=True))


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise", "mxfp8"])
def test_fp8_training_tracks_bf16(recipe, tiny_hf, model_parallel):
    from rlad_megatron.fp8 import check_fp8_available, transformer_config_fp8_kwargs

    if recipe not in _supported_recipes():
        pytest.skip(f"fp8.recipe={recipe!r} needs a newer GPU than {torch.cuda.get_device_name()}")
    settings = FP8Settings(enabled=True, format="hybrid", recipe=recipe)
    check_fp8_available(settings)
    bf16 = _train_losses(tiny_hf, {})
    fp8 = _train_losses(tiny_hf, transformer_config_fp8_kwargs(settings))
    print(f"\n{recipe}: bf16 {['%.4f' % x for x in bf16]}\n{recipe}: fp8  {['%.4f' % x for x in fp8]}")
    assert all(math.isfinite(x) for x in bf16 + fp8)
    for step, (a, b) in enumerate(zip(bf16, fp8)):
        assert abs(a - b) / a < REL_TOL, f"step {step}: bf16 {a:.4f} vs fp8 {b:.4f}"
    assert fp8 != bf16, "FP8 losses are identical to BF16: FP8 was not engaged"
    assert fp8[-1] < fp8[0], "FP8 training did not reduce the loss"


def test_fp8_params_export_their_values(tiny_hf, model_parallel):
    """R4 on Transformer Engine itself: with fp8.fp8_params=true the linear weights are TE quantized tensors; the HF
    tensors that the export and the weight sync gather are plain tensors equal to their dequantized values (the CPU
    test, tests/distributed/test_export_fp8_params.py, uses a stand-in subclass)."""
    from rlad_megatron.fp8 import check_fp8_available, transformer_config_fp8_kwargs
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import iter_hf_tensors

    settings = FP8Settings(enabled=True, format="hybrid", recipe="delayed", fp8_params=True)
    check_fp8_available(settings)
    chunks, arch = load_hf_model(tiny_hf, params_dtype=torch.bfloat16, **transformer_config_fp8_kwargs(settings))
    quantized = {n: p for n, p in chunks[0].named_parameters() if type(p.detach()) is not torch.Tensor}
    assert quantized, "fp8_params=true gave no quantized parameters"
    name, param = next((n, p) for n, p in quantized.items() if "linear_fc2" in n)
    layer = int(name.split("layers.")[1].split(".")[0])
    tensors = dict(iter_hf_tensors(chunks, arch))
    assert all(type(t) is torch.Tensor and t.dtype == torch.bfloat16 for t in tensors.values())
    down = tensors[f"model.layers.{layer}.mlp.down_proj.weight"]
    assert torch.equal(down, param.detach().dequantize().to(down.device))
