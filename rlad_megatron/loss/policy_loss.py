"""One entry for the trainer: a micro-batch's policy loss and its metrics, for every algorithm.

``compute_policy_loss(config, logprobs=..., mask=..., denominators=..., ...)`` returns ``(loss, metrics)``:
``loss`` is this micro-batch's share of the global-batch objective (shares add up exactly over micro-batches
and DP ranks, see :mod:`rlad_megatron.loss.aggregation`) and ``metrics`` a ``dict[str, Stat]`` to accumulate
with :class:`rlad_megatron.loss.metrics.MetricAccumulator`. Which inputs an algorithm needs is given by
:func:`required_inputs`.

Per-token objective (to minimise), then aggregated with ``config.aggregation``:

- ``rlad``: TRRD surrogate (Eq. 3-5, App. B)
- ``grpo``: GRPO/DAPO surrogate (optional dual clip)
- ``kdrl``: GRPO/DAPO surrogate ``+ kd_beta(progress) * KL_est(pi_S || pi_T)`` (skipped on correct responses
  when ``kd_skip_correct``)
- ``sft``: ``-log pi_S(y_t)``
- rlad/grpo/kdrl: ``+ topk_beta * KL_topk`` when ``topk_beta > 0`` (:mod:`rlad_megatron.loss.distribution`: the KL
  over the teacher's top-k tokens plus a tail bucket, direction ``topk_kl``); with ``kd_estimator=topk`` KDRL's
  penalty is that KL instead of the sampled-token estimate
- ``teacher_trust`` (gate/scale): per response, rlad's alpha moves towards 1 (GRPO) and the teacher KL terms are
  weighted by the teacher's trust on that prompt (:mod:`rlad_megatron.loss.trust`)
- all: ``+ kl_beta * KL_est(pi_S || pi_ref)`` when ``kl_beta > 0``; ``- entropy_coef * H`` when ``entropy_coef > 0``
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlad_megatron.config.loss import LossConfig, as_loss_config, required_inputs  # noqa: F401 (re-exported)
from rlad_megatron.loss.aggregation import Denominators, aggregate, as_bool_mask
from rlad_megatron.loss.distribution import masked_topk_kl, topk_mass
from rlad_megatron.loss.metrics import Stat, extremum_stat, fraction_stat, mean_stat, sum_stat
from rlad_megatron.loss.surrogates import SurrogateParts, grpo_parts, kl_estimate, trrd_parts
from rlad_megatron.loss.trust import sequence_alpha, teacher_weights, trust_metrics

_PER_TOKEN_INPUTS = ("old_logprobs", "teacher_logprobs", "ref_logprobs", "entropy")


def compute_policy_loss(
    config: LossConfig | str,
    *,
    logprobs: Tensor,
    mask: Tensor,
    denominators: Denominators,
    old_logprobs: Tensor | None = None,
    teacher_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    advantages: Tensor | None = None,
    entropy: Tensor | None = None,
    correct: Tensor | None = None,
    progress: float = 0.0,
    token_weights: Tensor | None = None,
    student_topk_logprobs: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    teacher_pass_rate: Tensor | None = None,
    teacher_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Stat]]:
    """This micro-batch's share of the step's loss, and its metrics.

    Args:
        config: a :class:`LossConfig` (validated here) or an algorithm name for its defaults.
        logprobs: ``[B, T]`` current student's log-probs of the sampled tokens, with gradient.
        mask: ``[B, T]`` bool (or 0/1), True on response tokens that count.
        denominators: global counts of the whole step's batch (see ``loss.aggregation``).
        old_logprobs: ``[B, T]`` rollout policy's log-probs (rlad/grpo/kdrl). With one update per rollout batch,
            pass ``logprobs.detach()``.
        teacher_logprobs: ``[B, T]`` frozen teacher's log-probs of the same tokens (rlad/kdrl).
        ref_logprobs: ``[B, T]`` reference policy's log-probs (when ``kl_beta > 0``).
        advantages: ``[B]``, ``[B, 1]`` or ``[B, T]`` (rlad/grpo/kdrl), e.g. from ``group_advantages``.
        entropy: ``[B, T]`` student's entropy per position, with gradient (when ``entropy_coef > 0``; used for
            the metric whenever given).
        correct: ``[B]`` bool, the verifier's verdict per response (kdrl with ``kd_skip_correct``).
        progress: fraction of training done, in [0, 1], for the KDRL beta schedule.
        token_weights: ``[B, T]`` per-token weights of the policy-gradient term, no gradient (e.g. truncated
            importance-sampling weights for the rollout engine's mismatch); None means 1.
        student_topk_logprobs: ``[B, T, topk_k]`` float32 current student's log-probs at the teacher's top-k ids of
            each position, with gradient (``rlad_megatron.logprobs.vocab_parallel_logprobs_at``); for a top-k term.
        teacher_topk_logprobs: ``[B, T, topk_k]`` float32 the teacher's log-probs of its own top-k ids.
        teacher_pass_rate: ``[B]`` the teacher's pass rate on each response's prompt, in [0, 1] (``teacher_trust``).
        teacher_weight: ``[B]`` in [0, 1], the weight of the teacher each response is routed to (several teachers),
            multiplied into the trust weight (a per-response teacher weight like trust's); None means 1.

    Returns:
        ``(loss, metrics)``: a 0-d tensor to backpropagate and a ``dict[str, Stat]``.
    """
    cfg = as_loss_config(config)
    given = {
        "old_logprobs": old_logprobs, "teacher_logprobs": teacher_logprobs, "ref_logprobs": ref_logprobs,
        "advantages": advantages, "entropy": entropy, "correct": correct,
        "student_topk_logprobs": student_topk_logprobs, "teacher_topk_logprobs": teacher_topk_logprobs,
        "teacher_pass_rate": teacher_pass_rate,
    }
    missing = sorted(name for name in required_inputs(cfg) if given[name] is None)
    if missing:
        raise ValueError(f"algorithm {cfg.algorithm!r} with this LossConfig needs {missing}; got None")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name in _PER_TOKEN_INPUTS:
        t = given[name]
        if t is not None and t.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but logprobs has {tuple(logprobs.shape)}")
    if cfg.uses_topk():
        _check_topk_shapes(cfg, logprobs, student_topk_logprobs, teacher_topk_logprobs)  # type: ignore[arg-type]
    m = as_bool_mask(mask, logprobs)
    metrics: dict[str, Stat] = {"tokens": sum_stat(m.sum(), m.shape[0])}

    trust = None  # [B] float64 teacher weights, None when every response trusts the teacher fully
    if cfg.teacher_trust != "none":
        if teacher_pass_rate.shape != (logprobs.shape[0],):  # type: ignore[union-attr]
            raise ValueError(f"teacher_pass_rate must be [B] = [{logprobs.shape[0]}], got shape "
                             f"{tuple(teacher_pass_rate.shape)}")  # type: ignore[union-attr]
        trust = teacher_weights(teacher_pass_rate, cfg.teacher_trust, cfg.teacher_trust_threshold)  # type: ignore[arg-type]
        metrics.update(trust_metrics(teacher_pass_rate, trust, m))  # type: ignore[arg-type]
    if teacher_weight is not None:
        trust = _with_teacher_weight(trust, teacher_weight, logprobs.shape[0])
    alpha = cfg.alpha if trust is None else sequence_alpha(cfg.alpha, trust)
    per_token, parts = _main_term(cfg, logprobs, old_logprobs, teacher_logprobs, advantages, alpha)
    if token_weights is not None:
        if token_weights.shape != logprobs.shape:
            raise ValueError(f"token_weights has shape {tuple(token_weights.shape)}, logprobs {tuple(logprobs.shape)}")
        per_token = per_token * token_weights.detach()
        metrics["tis/weight"] = mean_stat(token_weights, m)
    if parts is not None:
        _surrogate_metrics(metrics, parts, m)
        metrics["kl/old_k3"] = mean_stat(kl_estimate(old_logprobs.detach(), logprobs.detach(), "k3"), m)  # type: ignore[union-attr]
        metrics["pg_loss"] = mean_stat(parts.loss, m)
    else:
        metrics["sft/nll"] = mean_stat(per_token, m)
    if teacher_logprobs is not None:
        metrics["kl/teacher_k3"] = mean_stat(kl_estimate(logprobs.detach(), teacher_logprobs.detach(), "k3"), m)

    topk = None
    if cfg.uses_topk():
        # over the tokens of trusted responses only: a gated response's term is 0, gradient included
        topk_mask = m if trust is None else m & (trust > 0).unsqueeze(-1)
        topk = masked_topk_kl(student_topk_logprobs, teacher_topk_logprobs, topk_mask, cfg.topk_kl)  # type: ignore[arg-type]
        metrics["topk/kl"] = mean_stat(topk, topk_mask)
        metrics["topk/teacher_mass"] = mean_stat(topk_mass(teacher_topk_logprobs), topk_mask)  # type: ignore[arg-type]
        metrics["topk/student_mass"] = mean_stat(topk_mass(student_topk_logprobs), topk_mask)  # type: ignore[arg-type]
    if cfg.algorithm == "kdrl":
        kd = topk if cfg.topk_in_kd() else kl_estimate(logprobs, teacher_logprobs, cfg.kd_estimator)  # type: ignore[arg-type]
        per_token = per_token + _kd_term(cfg, metrics, kd, correct, m, progress, trust)  # type: ignore[arg-type]
    if cfg.topk_beta > 0:
        per_token = per_token + cfg.topk_beta * _trusted(topk, trust)  # type: ignore[arg-type]
    if cfg.kl_beta > 0:
        ref_kl = kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator)  # type: ignore[arg-type]
        metrics["kl/ref"] = mean_stat(ref_kl, m)
        per_token = per_token + cfg.kl_beta * ref_kl
    if entropy is not None:
        metrics["entropy"] = mean_stat(entropy, m)
        if cfg.entropy_coef > 0:
            per_token = per_token - cfg.entropy_coef * entropy

    loss = aggregate(
        per_token, m, mode=cfg.aggregation, denominators=denominators, max_response_len=cfg.max_response_len
    )
    metrics["loss"] = sum_stat(loss.detach())
    return loss, metrics


def _check_topk_shapes(cfg: LossConfig, logprobs: Tensor, student: Tensor, teacher: Tensor) -> None:
    want = (*logprobs.shape, cfg.topk_k)
    for name, t in (("student_topk_logprobs", student), ("teacher_topk_logprobs", teacher)):
        if tuple(t.shape) != want:
            raise ValueError(f"{name} has shape {tuple(t.shape)}; expected [B, T, loss.topk_k] = {want}")


def _with_teacher_weight(trust: Tensor | None, weight: Tensor, rows: int) -> Tensor:
    """``[B]`` float64: the trust weights (None: 1) times the routed teachers' weights."""
    if weight.shape != (rows,):
        raise ValueError(f"teacher_weight must be [B] = [{rows}], got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float64)
    if w.numel() and not bool(((w >= 0) & (w <= 1)).all()):
        raise ValueError(f"teacher_weight must hold weights in [0, 1]: min {float(w.min())}, max {float(w.max())}")
    return w if trust is None else trust * w.to(trust.device)


def _trusted(per_token: Tensor, trust: Tensor | None) -> Tensor:
    """A teacher term ``[B, T]`` weighted by the per-response teacher trust ``[B]`` (unchanged without trust); exactly
    zero, gradient included, where the trust is 0 (even if the term is not finite there)."""
    if trust is None:
        return per_token
    w = trust.to(per_token.dtype).unsqueeze(-1)
    return torch.where(w > 0, per_token * w, torch.zeros((), dtype=per_token.dtype, device=per_token.device))


def _main_term(
    cfg: LossConfig,
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    teacher_logprobs: Tensor | None,
    advantages: Tensor | None,
    alpha: float | Tensor,
) -> tuple[Tensor, SurrogateParts | None]:
    if cfg.algorithm == "sft":
        return -logprobs, None
    if cfg.algorithm == "rlad":
        parts = trrd_parts(
            logprobs, old_logprobs, teacher_logprobs, advantages,  # type: ignore[arg-type]
            alpha=alpha, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
            teacher_log_ratio_clip=cfg.teacher_log_ratio_clip, dual_clip_c=cfg.dual_clip_c,
        )
    else:
        parts = grpo_parts(
            logprobs, old_logprobs, advantages,  # type: ignore[arg-type]
            eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip_c=cfg.dual_clip_c,
        )
    return parts.loss, parts


def _surrogate_metrics(metrics: dict[str, Stat], parts: SurrogateParts, m: Tensor) -> None:
    ratio = torch.exp(parts.log_ratio.detach())
    metrics["clip/low_frac"] = fraction_stat(parts.clipped_low, m)
    metrics["clip/high_frac"] = fraction_stat(parts.clipped_high, m)
    metrics["clip/dual_frac"] = fraction_stat(parts.dual_clipped, m)
    metrics["ratio/mean"] = mean_stat(ratio, m)
    metrics["ratio/min"] = extremum_stat(ratio, m, "min")
    metrics["ratio/max"] = extremum_stat(ratio, m, "max")
    if parts.teacher_clamped is not None:
        metrics["teacher/clamp_frac"] = fraction_stat(parts.teacher_clamped, m)


def _kd_term(
    cfg: LossConfig,
    metrics: dict[str, Stat],
    kd: Tensor,
    correct: Tensor | None,
    m: Tensor,
    progress: float,
    trust: Tensor | None,
) -> Tensor:
    """KDRL's ``beta * KL(pi_S || pi_T)`` per token (``kd`` ``[B, T]``: a sampled-token estimate or the top-k KL),
    zero on skipped (correct) responses, weighted by the teacher trust."""
    beta = cfg.kd_beta_at(progress)
    kd_mask = m
    if cfg.kd_skip_correct:
        assert correct is not None
        if correct.shape != (kd.shape[0],):
            raise ValueError(f"correct must be [B] = [{kd.shape[0]}] bool, got shape {tuple(correct.shape)}")
        skip = correct.to(torch.bool).unsqueeze(-1)
        kd_mask = m & ~skip
        has_tokens = m.any(dim=-1)
        metrics["kd/skipped_seq_frac"] = fraction_stat(skip.squeeze(-1), has_tokens)
    metrics["kd/kl"] = mean_stat(kd, kd_mask)
    metrics["kd/beta"] = extremum_stat(torch.tensor(beta, dtype=torch.float64, device=kd.device),
                                       torch.tensor(True, device=kd.device), "max")
    zero = torch.zeros((), dtype=kd.dtype, device=kd.device)
    return beta * _trusted(torch.where(kd_mask, kd, zero), trust)
