"""Qwen3-MoE and Qwen2-MoE (shared expert) teachers from HF checkpoints: token log-probs (the trainer's scoring
path) at EP=1, EP=2, TP2 x EP2 and PP2 x EP2 equal transformers' (fp32, 1e-4); every HF tensor comes back bit for
bit through the EP-aware gather; HF -> Megatron (EP=2) -> Megatron (TP=2, EP=1) -> HF is bit-exact; a MoE student's
learner step is equal at EP=1 and EP=2, with the router load-balancing loss in the gradients and reported."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlad_megatron.testing.distributed import run_distributed
from rlad_megatron.tiny.hf_model import make_tiny_hf_model

pytestmark = pytest.mark.distributed
MODELS = {
    "qwen3_moe": dict(family="qwen3_moe", num_layers=2, seed=41),
    "qwen2_moe": dict(family="qwen2_moe", num_layers=2, seed=42),
}
SEQS = [[1, 10, 11, 12, 13, 14, 15, 16, 17, 18], [1, 20, 21, 22, 23, 24, 25, 26]]
PROMPT_LENS = [3, 2]


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf_moe")
    for name, kw in MODELS.items():
        make_tiny_hf_model(root / name, **kw)
    return root


def _hf_token_logprobs(path: Path) -> list[list[float]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for seq, p in zip(SEQS, PROMPT_LENS):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), dim=-1)
            out.append([logp[t - 1, seq[t]].item() for t in range(p, len(seq))])
    return out


def _rank_teacher(root: str) -> dict:
    from safetensors.torch import load_file

    from rlad_megatron.models import load_teacher
    from rlad_megatron.models.hf_export import iter_hf_tensors
    from rlad_megatron.learner.policy import MegatronPolicy
    from rlad_megatron.learner.sequences import SequenceBatch

    report = {}
    for name in MODELS:
        path = Path(root) / name
        chunks, arch = load_teacher(path)
        # the trainer's teacher-scoring path (Megatron's forward schedule, so PP works); right-padded batch
        length = max(len(q) for q in SEQS)
        tokens = torch.tensor([q + [0] * (length - len(q)) for q in SEQS])
        n = len(SEQS)
        batch = SequenceBatch(tokens=tokens, loss_mask=torch.ones(n, length - 1, dtype=torch.bool),
                              advantages=torch.zeros(n), rewards=torch.zeros(n),
                              correct=torch.zeros(n, dtype=torch.bool), engine_logprobs=torch.zeros(n, length - 1))
        full = MegatronPolicy(chunks, arch.vocab_size).token_logprobs(batch, batching=1)
        lps = None if full is None else [full[i, p - 1:len(q) - 1].tolist()
                                         for i, (q, p) in enumerate(zip(SEQS, PROMPT_LENS))]
        original = load_file(path / "model.safetensors")
        got = dict(iter_hf_tensors(chunks, arch))
        dst = dict(iter_hf_tensors(chunks, arch, dst_only=True))
        report[name] = {"logprobs": lps, "local_experts": len(chunks[0].decoder.layers[0].mlp.local_expert_indices),
                        "all_bitwise": sorted(got) == sorted(original)
                        and all(torch.equal(got[k], original[k]) for k in original),
                        "dst": len(dst), "dst_bitwise": all(torch.equal(dst[k], original[k]) for k in dst)}
    return report


@pytest.mark.parametrize("ep,tp,pp", [(1, 1, 1), (2, 1, 1), pytest.param(2, 2, 1, marks=pytest.mark.slow),
                                      pytest.param(2, 1, 2, marks=pytest.mark.slow)])
def test_moe_teacher_logprobs_and_tensors(hf_models, ep, tp, pp):
    world = ep * tp * pp  # EP spans the data-parallel ranks of a stage: DP = EP here
    reports = run_distributed(_rank_teacher, world, ep=ep, tp=tp, pp=pp, args=(str(hf_models),), timeout=400)
    for name in MODELS:
        ref = _hf_token_logprobs(hf_models / name)
        for rank, report in enumerate(reports):
            entry = report[name]
            assert entry["local_experts"] == 4 // ep
            assert entry["all_bitwise"] and entry["dst_bitwise"], (name, rank)
            if entry["logprobs"] is not None:  # the last pipeline stage
                err = max(abs(a - b) for x, y in zip(entry["logprobs"], ref) for a, b in zip(x, y))
                assert err < 1e-4, (name, ep, tp, pp, rank, err)
        assert sum(r[name]["logprobs"] is not None for r in reports) >= 1
        assert sum(r[name]["dst"] > 0 for r in reports) == ep  # each replica's first rank yields


def _convert_chain(argvs: list[list[str]]) -> list[int]:
    """Several conversions one after the other in the same ranks (each sets up its own parallel layout; a rank's
    start-up is seconds, so one run does them all)."""
    from rlad_megatron.convert import main

    return [main(argv) for argv in argvs]


@pytest.mark.slow
def test_moe_round_trip_ep2_to_tp2_to_hf(hf_models, tmp_path):
    from safetensors.torch import load_file

    argvs = []
    for name in MODELS:
        hf, ep2, tp2, back = hf_models / name, tmp_path / f"{name}_ep2", tmp_path / f"{name}_tp2", tmp_path / name
        argvs += [["hf-to-mcore", "--hf", str(hf), "--out", str(ep2), "--ep", "2"],
                  ["mcore-to-mcore", "--ckpt", str(ep2), "--out", str(tp2), "--tp", "2"],
                  ["mcore-to-hf", "--ckpt", str(tp2), "--out", str(back), "--ep", "2"]]
    codes = run_distributed(_convert_chain, 2, ep=2, args=(argvs,), timeout=400)
    assert codes == [[0] * len(argvs)] * 2, codes
    for name in MODELS:
        hf, back = hf_models / name, tmp_path / name
        original, exported = load_file(hf / "model.safetensors"), load_file(back / "model.safetensors")
        assert sorted(exported) == sorted(original), name
        for key, tensor in original.items():
            assert torch.equal(exported[key], tensor), (name, key)


def _moe_train_step(hf: str, aux_coeff: float | None) -> dict:
    """One real learner step (DDP + Megatron Adam through MegatronPolicy.train_step) of a MoE student on 2
    data-parallel ranks; returns the grad norm, the reported router metrics and the updated HF tensors."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from rlad_megatron.config import OptimConfig
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.learner.sequences import SequenceBatch
    from rlad_megatron.models import load_hf_model
    from rlad_megatron.models.hf_export import iter_hf_tensors

    overrides = {} if aux_coeff is None else {"moe_aux_loss_coeff": aux_coeff}
    chunks, arch = load_hf_model(hf, trainable=True, **overrides)
    wrapped, optimizer = build_student(chunks, OptimConfig(lr=1e-3, clip_grad=0.0))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    tokens = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(100 + rank))
    batch = SequenceBatch(tokens=tokens, loss_mask=torch.ones(4, 11, dtype=torch.bool), advantages=torch.zeros(4),
                          rewards=torch.zeros(4), correct=torch.zeros(4, dtype=torch.bool),
                          engine_logprobs=torch.zeros(4, 11))
    total_tokens = 4 * 11 * dp  # the loss share carries the global denominator (see MegatronPolicy._run)
    result = policy.train_step(batch, lambda lp, e, mb: (-lp.sum() / total_tokens, {}), batching=2)
    weights = dict(iter_hf_tensors(chunks, arch))
    return {"applied": result.applied, "grad_norm": result.grad_norm, "moe": result.moe,
            "weights": weights if dist.get_rank() == 0 else None}


@pytest.mark.slow
def test_moe_student_step_equal_at_ep1_and_ep2(tmp_path):
    hf = make_tiny_hf_model(tmp_path / "moe", family="qwen3_moe", num_layers=2, seed=43,
                            moe={"router_aux_loss_coef": 0.1})
    ep1 = run_distributed(_moe_train_step, 2, ep=1, args=(str(hf), None), timeout=300)
    ep2 = run_distributed(_moe_train_step, 2, ep=2, args=(str(hf), None), timeout=300)
    no_aux = run_distributed(_moe_train_step, 2, ep=1, args=(str(hf), 0.0), timeout=300)
    a, b = ep1[0], ep2[0]
    assert a["applied"] and b["applied"]
    lb = a["moe"]["moe/load_balancing_loss"]
    assert lb > 0.5  # switch loss: 1.0 for perfectly balanced routing, more otherwise
    assert b["moe"]["moe/load_balancing_loss"] == pytest.approx(lb, rel=1e-5)
    assert ep1[1]["moe"] == a["moe"] and ep2[1]["moe"] == b["moe"]  # reported on every rank
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    for key, tensor in a["weights"].items():
        torch.testing.assert_close(b["weights"][key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    # the load-balancing loss reaches the gradients: without it (coefficient 0) the step differs
    assert no_aux[0]["grad_norm"] != pytest.approx(a["grad_norm"], rel=1e-4)
