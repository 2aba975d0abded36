"""Memory per token of top-k distillation against the full-vocabulary KL (issue 33): what the teacher sends, and the
loss's peak extra memory, forward + backward.

Transport (exact arithmetic): a top-k teacher signal is ``k`` ids (int32) + ``k`` log-probs (float32) per token,
``8 k`` bytes (512 B at k = 64); the full distribution is ``V`` float32 log-probs per token (607,744 B at
V = 151,936).

Loss memory (measured): on ``--tokens`` positions of ``--vocab`` student logits, one step of

- ``full``: the full-vocabulary KL, written plainly: ``log_softmax`` of the student in float32, the teacher's full
  float32 log-probs as input, ``sum_v p (log p - log q)``, backward into the logits;
- ``topk``: ``vocab_parallel_logsumexp`` + ``vocab_parallel_logprobs_at`` at the teacher's top-k ids, then
  ``topk_kl`` (k + 1 buckets), backward into the logits;

each in the forward and reverse direction. Peak extra = the largest number of bytes of CPU tensors allocated at once
during the step, above its inputs (torch profiler replay: ``rlad_megatron.testing.memory.peak_bytes``). It includes
the logits' gradient, which every variant must produce (1 L, L = the bytes of the student's logits). Printed per
token and as a multiple of L, with the ratio topk / full.

Final line: ``topk_memory: transport_ratio=<full/topk bytes> loss_mem_ratio=<topk/full peak, worst direction>``.
Run: ``.venv/bin/python bench/topk_memory.py [--tokens 128 --vocab 151936 --k 64 --dtype fp32]`` (about 1 GB at
the defaults, seconds on one thread).
"""

from __future__ import annotations

import argparse
import time

import torch


def transport_bytes_per_token(k: int, vocab: int) -> tuple[int, int]:
    """``(top-k, full)`` bytes per token: ``k`` int32 ids + ``k`` float32 log-probs, against ``V`` float32."""
    return k * (4 + 4), vocab * 4


def _full_kl(student: torch.Tensor, teacher_logprobs: torch.Tensor, direction: str) -> torch.Tensor:
    ls = torch.log_softmax(student.float(), dim=-1)
    p, logp, logq = ((teacher_logprobs.exp(), teacher_logprobs, ls) if direction == "forward"
                     else (ls.exp(), ls, teacher_logprobs))
    return (p * (logp - logq)).sum(dim=-1)


def _topk_kl(student: torch.Tensor, t_lp: torch.Tensor, t_ids: torch.Tensor, direction: str) -> torch.Tensor:
    from rlad_megatron.logprobs import vocab_parallel_logprobs_at, vocab_parallel_logsumexp
    from rlad_megatron.loss.distribution import topk_kl

    lse = vocab_parallel_logsumexp(student)
    s_lp = vocab_parallel_logprobs_at(student, t_ids, lse)
    return topk_kl(s_lp.unsqueeze(0), t_lp.unsqueeze(0), direction).squeeze(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rlad_megatron.logprobs import vocab_parallel_topk
    from rlad_megatron.testing.memory import peak_bytes

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    gen = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(a.tokens, a.vocab, generator=gen)).to(dtype)
    teacher_logits = 3 * torch.randn(a.tokens, a.vocab, generator=gen)
    teacher_full = torch.log_softmax(teacher_logits, dim=-1)  # what a full-distribution teacher sends
    t_lp, t_ids = vocab_parallel_topk(teacher_logits, a.k)  # what a top-k teacher sends
    t_ids = t_ids.to(torch.int32)
    del teacher_logits
    g = torch.randn(a.tokens, generator=gen)
    logits_bytes = student.numel() * student.element_size()

    topk_b, full_b = transport_bytes_per_token(a.k, a.vocab)
    print(f"teacher signal per token: top-k (k={a.k}: int32 ids + fp32 log-probs) {topk_b:,} B, "
          f"full distribution (V={a.vocab:,} fp32) {full_b:,} B, ratio {full_b / topk_b:,.0f}x")

    def step(x: torch.Tensor, variant: str, direction: str) -> None:
        kl = _full_kl(x, teacher_full, direction) if variant == "full" else _topk_kl(x, t_lp, t_ids, direction)
        (kl * g).sum().backward()
        assert x.grad is not None

    worst = 0.0
    for direction in ("forward", "reverse"):
        peaks = {}
        for variant in ("full", "topk"):
            step(student.clone().requires_grad_(), variant, direction)  # warm-up
            x = student.clone().requires_grad_()  # an input: outside the measured step
            started = time.perf_counter()
            peak, _, _ = peak_bytes(lambda: step(x, variant, direction))
            del x
            seconds = time.perf_counter() - started
            peaks[variant] = peak
            print(f"  {direction:7s} {variant:4s}: peak extra {peak / a.tokens / 1024:10,.1f} KiB/token "
                  f"= {peak / logits_bytes:5.2f} L   ({seconds * 1e3:7.1f} ms under the profiler)")
        ratio = peaks["topk"] / peaks["full"]
        worst = max(worst, ratio)
        print(f"  {direction:7s} topk / full peak extra memory: {ratio:.3f}")
    print(f"(L = student logits {a.tokens} x {a.vocab:,} {a.dtype} = {logits_bytes / 2**20:.1f} MiB; both variants "
          "produce the logits' gradient, 1 L of their peak)")
    print(f"topk_memory: transport_ratio={full_b / topk_b:.1f} loss_mem_ratio={worst:.3f}")


if __name__ == "__main__":
    main()
