"""Why each CPU patch of ``rlad_megatron.compat.megatron_cpu`` exists: with the patch left out, stock megatron-core
0.16.1 fails on CPU (or silently computes wrong results); with it, the same code works. If an upstream release fixes
one of these, its "without" test fails here: then the patch is unnecessary and should be removed."""
from __future__ import annotations

import pytest
import torch

from rlad_megatron.testing.distributed import DistributedRunError, run_distributed

pytestmark = pytest.mark.distributed


def _setup(skip: tuple[str, ...], tp: int = 1) -> None:
    from rlad_megatron import parallel
    from rlad_megatron.compat import megatron_cpu

    megatron_cpu.apply(skip=frozenset(skip))
    parallel.initialize_model_parallel(tp)


def _forward(skip: tuple[str, ...], tp: int = 1, **config_overrides) -> float:
    _setup(skip, tp)
    from rlad_megatron.testing.tiny_gpt import tiny_batch, tiny_config, tiny_gpt

    model = tiny_gpt(tiny_config(**config_overrides))
    b = tiny_batch()
    return float(model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"]).mean())


def _recompute_grads(skip: tuple[str, ...]) -> list[torch.Tensor]:
    """Gradients with dropout 0.2, with and without full activation recompute: recompute must replay the RNG."""
    _setup(skip)
    from rlad_megatron.testing.tiny_gpt import tiny_batch, tiny_config, tiny_gpt

    grads = []
    for recompute in (None, "full"):
        extra = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1) \
            if recompute else {}
        model = tiny_gpt(tiny_config(hidden_dropout=0.2, attention_dropout=0.2, **extra), seed=3)
        model.train()
        b = tiny_batch()
        torch.manual_seed(11)
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(11)
        model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"]).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return grads


def _broadcast_data(skip: tuple[str, ...]) -> list[int]:
    _setup(skip)
    from megatron.core import tensor_parallel

    out = tensor_parallel.broadcast_data(["x"], {"x": torch.arange(4)}, torch.int64)
    return out["x"].tolist()


def _build_distributed_optimizer(skip: tuple[str, ...]) -> str:
    _setup(skip)
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from rlad_megatron.testing.tiny_gpt import tiny_config, tiny_gpt

    config = tiny_config()
    ddp = DistributedDataParallel(
        config=config, ddp_config=DistributedDataParallelConfig(use_distributed_optimizer=True),
        module=tiny_gpt(config),
    )
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=True),
                                       [ddp])
    return type(optimizer).__name__


def _scatter(skip: tuple[str, ...]) -> dict:
    """gloo's scatter of non-contiguous views (megatron scatters such views in the distributed optimizer)."""
    _setup(skip)
    import torch.distributed as dist

    from megatron.core.optimizer import distrib_optimizer

    full = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    views = list(full.chunk(2, dim=1))  # non-contiguous column blocks
    expected = views[dist.get_rank()].contiguous()
    results = {}
    for label, scatter in (("raw", dist.scatter), ("megatron", distrib_optimizer.torch.distributed.scatter)):
        out = torch.empty(4, 2)
        scatter(out, views if dist.get_rank() == 0 else None, src=0)
        results[label] = bool(torch.equal(out, expected))
    return results


def _expect_failure(fn, skip, match: str, **kwargs) -> None:
    with pytest.raises(DistributedRunError, match=match):
        run_distributed(fn, kwargs.pop("world_size", 1), args=(skip, *kwargs.pop("args", ())),
                        init_megatron=False, timeout=120)


def test_torch_proxy_needed_for_forward() -> None:
    _expect_failure(_forward, ("torch_proxy",), "CUDA|cuda")
    assert run_distributed(_forward, 1, args=((),), init_megatron=False)[0] > 0


def test_rng_patch_needed_for_dropout_and_recompute() -> None:
    _expect_failure(_recompute_grads, ("rng",), "CUDA|cuda|default_generators")
    plain, recomputed = run_distributed(_recompute_grads, 1, args=((),), init_megatron=False)[0]
    assert torch.equal(plain, recomputed), "activation recompute must replay the dropout RNG bit for bit"


def test_tensor_cuda_patch_needed_for_broadcast_data() -> None:
    _expect_failure(_broadcast_data, ("tensor_cuda",), "CUDA|cuda")
    assert run_distributed(_broadcast_data, 1, args=((),), init_megatron=False)[0] == [0, 1, 2, 3]


def test_type_check_patch_needed_for_distributed_optimizer() -> None:
    _expect_failure(_build_distributed_optimizer, ("type_checks",), "torch.cuda.FloatTensor")
    name = run_distributed(_build_distributed_optimizer, 1, args=((),), init_megatron=False)[0]
    assert name in ("ChainedOptimizer", "DistributedOptimizer")


def test_norm_patch_needed_for_sequence_parallel() -> None:
    with pytest.raises(DistributedRunError, match="sequence parallel not supported"):
        run_distributed(_forward, 2, args=(("norm_sequence_parallel",), 2), kwargs={"sequence_parallel": True},
                        init_megatron=False, timeout=120)
    losses = run_distributed(_forward, 2, args=((), 2), kwargs={"sequence_parallel": True}, init_megatron=False)
    assert losses[0] == losses[1]


def test_gloo_scatter_of_views_is_wrong_without_patch() -> None:
    results = run_distributed(_scatter, 2, args=((),), init_megatron=False, timeout=120)
    assert any(not r["raw"] for r in results), "gloo now scatters views correctly: drop the contiguous_scatter patch"
    assert all(r["megatron"] for r in results)


def _moe_forward(skip: tuple[str, ...]) -> float:
    """One forward of a tiny MoE model on Megatron's local spec (the router GEMM without Transformer Engine)."""
    _setup(skip)
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from rlad_megatron.testing.tiny_gpt import SEQ, VOCAB, tiny_batch, tiny_config

    config = tiny_config(num_moe_experts=4, moe_router_topk=2)
    torch.manual_seed(0)
    model = GPTModel(config=config, vocab_size=VOCAB, max_sequence_length=SEQ, position_embedding_type="rope",
                     transformer_layer_spec=get_gpt_layer_local_spec(num_experts=4, moe_grouped_gemm=False,
                                                                     normalization="RMSNorm"))
    b = tiny_batch()
    return float(model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"]).mean())


def test_moe_router_fix_needed_without_transformer_engine() -> None:
    _expect_failure(_moe_forward, ("moe_router_gemm",), "te_general_gemm")
    assert run_distributed(_moe_forward, 1, args=((),), init_megatron=False)[0] > 0


def _compat_as_on_a_gpu(fused_adam: bool) -> dict:
    """What ``parallel.apply_megatron_compat`` applies in a process where CUDA is present (simulated) and megatron-core
    took the torch fallbacks (this machine has neither Transformer Engine nor Apex); ``fused_adam``: megatron's
    ``Adam`` is a fused optimizer (as with TE or Apex), not torch AdamW."""
    from megatron.core import optimizer as mcore_optimizer
    from megatron.core.optimizer import distrib_optimizer
    from megatron.core.transformer import torch_norm

    from rlad_megatron import parallel
    from rlad_megatron.compat import megatron_cpu

    megatron_cpu.cuda_is_available = lambda: True
    if fused_adam:  # as megatron-core binds them when TE or Apex imports
        class FusedAdam(torch.optim.Optimizer):  # stands in for TE's / Apex's FusedAdam
            pass

        mcore_optimizer.Adam = distrib_optimizer.Adam = FusedAdam
        distrib_optimizer.HAVE_APEX_OR_TE = True
    fixes = parallel.apply_megatron_compat()
    return {"cpu_patches": megatron_cpu.is_applied(), "fixes": sorted(fixes),
            "distopt": getattr(distrib_optimizer.DistributedOptimizer.load_state_dict, "__rlad_patched__", False),
            "norm": getattr(torch_norm.WrappedTorchNorm.__new__, "__rlad_patched__", False)}


def test_te_less_fixes_follow_the_path_taken_not_the_device() -> None:
    """A GPU machine without TE/Apex (a plain PyTorch image) gets the fallbacks' fixes although the CPU patches stay
    off; with a fused Adam the distributed-optimizer checkpoint fix is left out."""
    gpu_plain = run_distributed(_compat_as_on_a_gpu, 1, args=(False,), init_megatron=False)[0]
    assert gpu_plain == {"cpu_patches": False, "fixes": ["distopt_checkpoint", "moe_router_gemm",
                                                         "norm_sequence_parallel"], "distopt": True, "norm": True}
    gpu_fused = run_distributed(_compat_as_on_a_gpu, 1, args=(True,), init_megatron=False)[0]
    assert gpu_fused["fixes"] == ["moe_router_gemm", "norm_sequence_parallel"] and not gpu_fused["distopt"]
