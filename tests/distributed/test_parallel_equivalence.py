"""The ground holds: a tiny GPTModel gives the same loss, gradients and updated weights under every parallel layout
as on one rank (TP=2, TP=2 + sequence parallel, PP=2, TP2xPP2 on 4 ranks, DP=2 with the distributed optimizer).

Each layout also runs with the fused output head (``learner/output_head.py`` + ``logprobs.fused``: the model returns
its hidden states, the loss's log-probs come from them without logits) against the single-rank step through
Megatron's own output layer and cross-entropy; and with embeddings tied to the output layer (TP2 + SP, PP=2: the
last stage's copy of the tied weight) against the tied single-rank step."""
from __future__ import annotations

import functools

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed

pytestmark = pytest.mark.distributed

GLOBAL_BATCH = 8
LR = 0.5


def _train_one_step(
    initial: dict, sequence_parallel: bool, distributed_optimizer: bool, num_microbatches: int, fused: bool = False,
    tied: bool = False,
) -> dict:
    """One forward/backward through Megatron's schedule + one Adam step. Returns the loss (last stage), full gradients
    (when they are whole on this rank) and full parameters after the step, with global names. ``fused``: the mean
    negative log-prob of the labels from the fused head instead of Megatron's cross-entropy (the same loss)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from rlad_megatron.testing.gather import gather_full, load_full
    from rlad_megatron.testing.tiny_gpt import SEQ, tiny_batch, tiny_config, tiny_gpt

    from rlad_megatron.learner.output_head import hidden_states_out
    from rlad_megatron.logprobs import fused_token_logprobs

    config = tiny_config(num_layers=2, sequence_parallel=sequence_parallel)
    model = tiny_gpt(config, tied=tied)
    load_full(model, initial)  # every layout starts from the single-rank model's weights
    ddp = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=distributed_optimizer
        ),
        module=model,
    )
    optimizer = get_megatron_optimizer(
        # The distributed optimizer supports only Adam. With eps = 1 its first step is lr * g / (|g| + 1), close to
        # SGD: an error in a gradient shows up in the updated weight at the gradient's own scale.
        OptimizerConfig(optimizer="adam", lr=LR, adam_eps=1.0, weight_decay=0.0, clip_grad=0.0,
                        use_distributed_optimizer=distributed_optimizer),
        [ddp],
    )
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = ddp.no_sync

    dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    batch = tiny_batch(GLOBAL_BATCH)
    per_rank = GLOBAL_BATCH // dp
    local = {k: (v[dp_rank * per_rank:(dp_rank + 1) * per_rank] if k != "attention_mask" else v)
             for k, v in batch.items()}
    mbs = per_rank // num_microbatches
    micro = [{k: (v[i * mbs:(i + 1) * mbs] if k != "attention_mask" else v) for k, v in local.items()}
             for i in range(num_microbatches)]

    def loss_func(output):
        loss = output.float().mean()
        return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        if not fused:
            out = model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"])
            return out, functools.partial(loss_func)
        with hidden_states_out(model) as head:
            out = model(b["tokens"], b["position_ids"], b["attention_mask"])

        def fused_loss(hidden):  # [s(/TP), b, h] -> the labels' log-probs [s, b]
            tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
            logprobs = fused_token_logprobs(hidden, head.weight, b["labels"].t(), tp_group=tp_group,
                                            sequence_parallel=head.sequence_parallel,
                                            accumulate_grad_into_main_grad=head.main_grad)
            return loss_func(-logprobs)

        return out, fused_loss

    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    reduced = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=[ddp], num_microbatches=num_microbatches,
        seq_length=SEQ, micro_batch_size=mbs, forward_only=False,
    )
    result: dict = {"stage": ps.get_pipeline_model_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank()}
    if ps.is_pipeline_last_stage():
        local_loss = torch.stack([r["loss"] for r in reduced]).mean()
        torch.distributed.all_reduce(local_loss, group=ps.get_data_parallel_group())
        result["loss"] = float(local_loss / dp)
    if dp == 1:
        result["grads"] = gather_full(ddp, grads=True)
    ok, grad_norm, _ = optimizer.step()
    assert ok
    result["params"] = gather_full(ddp)
    return result


def _merge(results: list[dict]) -> dict:
    merged: dict = {"grads": {}, "params": {}}
    for r in results:
        if r["tp_rank"] != 0:
            continue
        if "loss" in r:
            merged["loss"] = r["loss"]
        merged["grads"].update(r.get("grads", {}))
        merged["params"].update(r["params"])
    return merged


@pytest.fixture(scope="module")
def initial_and_reference() -> dict[bool, tuple[dict, dict]]:
    # One single-rank process makes them all (a rank's start-up is seconds): the initial weights, and the step from
    # them through Megatron's output layer, untied and tied.
    return run_distributed(_initial_and_reference, 1)[0]


@pytest.fixture(scope="module")
def initial(initial_and_reference) -> dict:
    return initial_and_reference[False][0]


@pytest.fixture(scope="module")
def reference(initial_and_reference) -> dict:
    initial, ref = initial_and_reference[False]
    # The step really changed the weights (the comparisons are not between two untouched models).
    assert max(float((ref["params"][n] - initial[n]).abs().max()) for n in initial) > 1e-3
    return ref


LAYOUTS = {
    # name: (world_size, tp, pp, sequence_parallel, distributed_optimizer, num_microbatches)
    "tp2": (2, 2, 1, False, False, 2),
    "tp2_sp": (2, 2, 1, True, True, 2),
    "pp2": (2, 1, 2, False, True, 4),
    "dp2_distopt": (2, 1, 1, False, True, 2),
    "tp2_pp2": (4, 2, 2, False, True, 2),
}


@pytest.mark.parametrize("head", ["megatron", "fused"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_rank(layout: str, head: str, initial: dict, reference: dict) -> None:
    world, tp, pp, sp, distopt, micro = LAYOUTS[layout]
    got = _merge(run_distributed(_train_one_step, world, tp=tp, pp=pp,
                                 args=(initial, sp, distopt, micro, head == "fused"), timeout=300))
    _assert_same_step(got, reference)


@pytest.mark.parametrize("layout", ["tp2_sp", "pp2"])
def test_fused_head_with_tied_embeddings_matches_single_rank(layout: str, initial_and_reference: dict) -> None:
    initial, reference = initial_and_reference[True]
    assert not any("output_layer" in n for n in reference["params"])  # tied: no weight of its own on one rank
    world, tp, pp, sp, distopt, micro = LAYOUTS[layout]
    embedding = "embedding.word_embeddings.weight"
    initial = {**initial, "output_layer.weight": initial[embedding]}  # the last stage's copy, under PP
    got = _merge(run_distributed(_train_one_step, world, tp=tp, pp=pp,
                                 args=(initial, sp, distopt, micro, True, True), timeout=300))
    for part in ("params", "grads"):  # PP: the last stage's copy of the tied weight equals the embedding
        copy = got[part].pop("output_layer.weight", None)
        assert (copy is not None) == (pp > 1)
        if copy is not None:
            torch.testing.assert_close(copy, got[part][embedding], rtol=1e-6, atol=1e-7, msg=f"tied copy {part}")
    _assert_same_step(got, reference)


def _assert_same_step(got: dict, reference: dict) -> None:
    assert abs(got["loss"] - reference["loss"]) < 1e-5, (got["loss"], reference["loss"])
    assert set(got["params"]) == set(reference["params"])
    if got["grads"]:
        assert set(got["grads"]) == set(reference["grads"])
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"grad {name}")
    for name, param in reference["params"].items():
        torch.testing.assert_close(got["params"][name], param, rtol=1e-4, atol=1e-6, msg=f"param {name}")


def _initial_params(tied: bool) -> dict:
    from rlad_megatron.testing.gather import gather_full
    from rlad_megatron.testing.tiny_gpt import tiny_config, tiny_gpt

    return gather_full(tiny_gpt(tiny_config(num_layers=2), tied=tied))


def _initial_and_reference() -> dict[bool, tuple[dict, dict]]:
    """Untied and tied: the single-rank model's weights, and the single-rank step from them through Megatron's
    output layer (merged like the layouts' results)."""
    out = {}
    for tied in (False, True):
        initial = _initial_params(tied)
        out[tied] = initial, _merge([_train_one_step(initial, False, False, 1, tied=tied)])
    return out
