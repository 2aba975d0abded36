"""The device policy on a GPU (issue 21): in a one-rank NCCL world (TP=1, PP=1) on cuda:LOCAL_RANK, one training
step of the student, the frozen teacher's scores and an HF export, with every tensor that reaches a model forward
or a collective checked to be on the rank's device (the collective's device for its group). Batches are built on
the CPU, as the trainer builds them, so the policy must move them. Skipped without CUDA (conftest).

This is the check that fails on the code before the device policy (CPU `finite`, CPU denominators, CPU receive
buffers, CPU micro-batches against CUDA weights)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from rlad_megatron.tiny.hf_model import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("dev") / "llama", family="llama", num_layers=2,
                              hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, seed=0)


class DeviceAudit:
    """Record every tensor that reaches a collective or a model forward on the wrong device."""

    COLLECTIVES = ("all_reduce", "broadcast", "send", "recv", "all_gather_into_tensor", "reduce_scatter_tensor",
                   "_reduce_scatter_base", "_all_gather_base")

    def __init__(self, monkeypatch):
        import torch.distributed as dist

        from rlad_megatron.device import collective_device

        self.wrong: list[str] = []
        self.seen = {"collective": 0, "forward": 0}
        for name in self.COLLECTIVES:
            original = getattr(dist, name, None)
            if original is None:
                continue

            def checked(tensor, *args, _name=name, _original=original, **kwargs):
                group = kwargs.get("group")
                want = collective_device(group)
                tensors = tensor if isinstance(tensor, (list, tuple)) else [tensor]
                for t in tensors:
                    if isinstance(t, torch.Tensor):
                        self.seen["collective"] += 1
                        if t.device != want:
                            self.wrong.append(f"dist.{_name}: tensor on {t.device}, group wants {want}")
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(dist, name, checked)

    def watch(self, module: torch.nn.Module) -> None:
        from rlad_megatron.device import rank_device

        def pre_hook(_mod, args, kwargs):
            for v in list(args) + list(kwargs.values()):
                if isinstance(v, torch.Tensor):
                    self.seen["forward"] += 1
                    if v.device != rank_device():
                        self.wrong.append(f"forward input on {v.device}, rank owns {rank_device()}")

        module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _cpu_batch(vocab: int):
    from rlad_megatron.learner.sequences import SequenceBatch, pack_sequences

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (5,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(3, vocab, (7,), generator=g).tolist() for _ in range(4)]
    tokens, mask, engine = pack_sequences(prompts, responses, [[-1.0] * 7] * 4, pad_id=0)
    return SequenceBatch(tokens=tokens, loss_mask=mask, advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]),
                         rewards=torch.zeros(4), correct=torch.zeros(4, dtype=torch.bool), engine_logprobs=engine)


def test_step_teacher_and_export_stay_on_the_rank_device(nccl_world, tiny_hf, tmp_path, monkeypatch):
    from rlad_megatron.config import OptimConfig
    from rlad_megatron.device import rank_device
    from rlad_megatron.learner.policy import MegatronPolicy, build_student
    from rlad_megatron.models import export_hf_checkpoint, load_hf_model
    from rlad_megatron.teacher import MegatronTeacher
    from rlad_megatron.loss import LossConfig, MetricAccumulator, compute_policy_loss
    from rlad_megatron.trainer.loop import _global_denominators, _peak_rss_mb, _reduce_metrics

    assert rank_device().type == "cuda" and torch.cuda.current_device() == rank_device().index
    modules, arch = load_hf_model(tiny_hf, trainable=True, params_dtype=torch.bfloat16)
    assert next(modules[0].parameters()).device == rank_device()
    wrapped, optimizer = build_student(modules, OptimConfig(lr=1e-3))
    policy = MegatronPolicy(wrapped, arch.vocab_size, optimizer=optimizer)
    teacher = MegatronTeacher.load(tiny_hf, batching=2, params_dtype=torch.bfloat16)
    audit = DeviceAudit(monkeypatch)
    for m in wrapped + teacher.policy.chunks:
        audit.watch(m)

    batch = _cpu_batch(arch.vocab_size)
    from megatron.core import parallel_state as ps

    denominators = _global_denominators(batch, ps.get_data_parallel_group())
    teacher_lp = teacher.token_logprobs(batch)
    assert teacher_lp is not None and teacher_lp.shape == batch.loss_mask.shape

    batch.teacher_logprobs = teacher_lp

    def loss_fn(logprobs, entropy, mb):  # the trainer's RLAD loss, with its metrics
        return compute_policy_loss(LossConfig(algorithm="rlad"), logprobs=logprobs, mask=mb.loss_mask,
                                   denominators=denominators, old_logprobs=logprobs.detach(),
                                   teacher_logprobs=mb.teacher_logprobs, advantages=mb.advantages,
                                   correct=mb.correct)

    result = policy.train_step(batch, loss_fn, batching=2)
    assert result.applied and result.grad_norm > 0
    acc = MetricAccumulator()
    for stats in result.metrics:
        acc.add(stats)
    logged = _reduce_metrics(acc, True, ps.get_model_parallel_group())
    assert logged and all(isinstance(v, float) for v in logged.values())
    assert _peak_rss_mb() > 0
    export_hf_checkpoint(modules, arch, tmp_path / "hf", tokenizer_dir=tiny_hf, dtype=torch.bfloat16)
    assert (tmp_path / "hf" / "config.json").exists()
    assert audit.seen["forward"] > 0 and audit.seen["collective"] > 0, audit.seen
    assert audit.wrong == [], "\n".join(sorted(set(audit.wrong)))
    assert torch.cuda.current_device() == rank_device().index
