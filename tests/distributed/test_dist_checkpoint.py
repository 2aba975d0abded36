"""A distributed checkpoint saved at TP=2 (model + distributed-optimizer state) reloads at TP=1 and at PP=2 with
identical weights, and the resumed run's next losses equal the uninterrupted run's."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import DistributedRunError, run_distributed

pytestmark = pytest.mark.distributed


def _learner(initial: dict | None):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from rlad_megatron.testing.gather import load_full
    from rlad_megatron.testing.tiny_gpt import tiny_config, tiny_gpt

    config = tiny_config()
    model = tiny_gpt(config)
    if initial is not None:
        load_full(model, initial)
    ddp = DistributedDataParallel(
        config=config, ddp_config=DistributedDataParallelConfig(use_distributed_optimizer=True), module=model
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-2, use_distributed_optimizer=True, clip_grad=1.0), [ddp]
    )
    config.finalize_model_grads_func = finalize_model_grads
    return ddp, optimizer


def _step(ddp, optimizer, seed: int, forward_only: bool = False) -> float | None:
    """One training step (or a forward-only loss) on batch ``seed``; the loss on the last stage, else None."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from rlad_megatron.testing.tiny_gpt import SEQ, tiny_batch

    batch = tiny_batch(4, seed=seed)

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"])
        return out, functools.partial(lambda o: (o.float().mean(), {"loss": o.float().mean().detach()}))

    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    reduced = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([batch]), model=[ddp], num_microbatches=1,
        seq_length=SEQ, micro_batch_size=4, forward_only=forward_only,
    )
    if not forward_only:
        ok, _, _ = optimizer.step()
        assert ok
    return float(reduced[0]["loss"]) if ps.is_pipeline_last_stage() else None


def _save_run(ckpt: str) -> dict:
    """TP=2: two steps, save, then the uninterrupted run's next step and a forward-only loss."""
    from rlad_megatron.learner.checkpoint import save_checkpoint
    from rlad_megatron.testing.gather import gather_full

    ddp, optimizer = _learner(None)
    _step(ddp, optimizer, seed=1)
    _step(ddp, optimizer, seed=2)
    saved = gather_full(ddp)
    save_checkpoint(ckpt, [ddp], optimizer)
    next_loss = _step(ddp, optimizer, seed=3)
    eval_loss = _step(ddp, optimizer, seed=4, forward_only=True)
    return {"saved": saved, "next_loss": next_loss, "eval_loss": eval_loss}


def _resume_run(ckpt: str) -> dict:
    from megatron.core import parallel_state as ps

    from rlad_megatron.learner.checkpoint import load_checkpoint
    from rlad_megatron.testing.gather import gather_full

    ddp, optimizer = _learner(None)
    load_checkpoint(ckpt, [ddp], optimizer)
    loaded = gather_full(ddp)
    next_loss = _step(ddp, optimizer, seed=3)
    eval_loss = _step(ddp, optimizer, seed=4, forward_only=True)
    return {"loaded": loaded, "next_loss": next_loss, "eval_loss": eval_loss,
            "tp_rank": ps.get_tensor_model_parallel_rank()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    ckpt = tmp_path_factory.mktemp("ckpt") / "step_2"
    results = run_distributed(_save_run, 2, tp=2, args=(str(ckpt),), timeout=300)
    assert (ckpt / "metadata.json").exists() and not ckpt.with_name("step_2.partial").exists()
    return ckpt, results[0]


@pytest.mark.parametrize("layout", ["tp1", "pp2"])
def test_resume_at_other_layout(layout: str, saved) -> None:
    ckpt, reference = saved
    world, tp, pp = {"tp1": (1, 1, 1), "pp2": (2, 1, 2)}[layout]
    results = run_distributed(_resume_run, world, tp=tp, pp=pp, args=(str(ckpt),), timeout=300)
    loaded = {}
    for r in results:
        loaded.update(r["loaded"])
    assert set(loaded) == set(reference["saved"])
    for name, tensor in reference["saved"].items():
        assert torch.equal(loaded[name], tensor), f"{name} differs after reload"
    next_loss = [r["next_loss"] for r in results if r["next_loss"] is not None][0]
    eval_loss = [r["eval_loss"] for r in results if r["eval_loss"] is not None][0]
    # Same weights and optimizer state (Adam moments and step): the resumed step matches the uninterrupted one.
    assert next_loss == pytest.approx(reference["next_loss"], abs=1e-6)
    assert eval_loss == pytest.approx(reference["eval_loss"], abs=1e-5)


def _resume_without_patch(ckpt: str) -> None:
    from rlad_megatron import parallel
    from rlad_megatron.compat import megatron_cpu

    megatron_cpu.apply(skip=frozenset({"distopt_checkpoint"}))
    parallel.initialize_model_parallel(1)
    _resume_run(ckpt)


def test_distopt_checkpoint_patch_is_needed(saved) -> None:
    ckpt, _ = saved
    with pytest.raises(DistributedRunError, match="step"):
        run_distributed(_resume_without_patch, 1, args=(str(ckpt),), init_megatron=False, timeout=120)
