"""``loss``: which policy loss to optimise and its hyper-parameters (the only place where their defaults live), and
the inputs each configured loss needs (:func:`required_inputs`, which every caller asks).

The maths: docs/algorithm.md (the equations of arXiv 2602.22495, cited in :mod:`rlad_megatron.loss`). Every field is
checked by :meth:`LossConfig.validate`, which raises ``ConfigError`` (a ``ValueError``) naming the bad field and the
accepted values.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from rlad_megatron.config.validators import ConfigError, choice, greater_than, in_range

Algorithm = Literal["rlad", "grpo", "kdrl", "sft"]
Aggregation = Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
KLEstimator = Literal["k1", "k2", "k3"]
KDEstimator = Literal["k1", "k2", "k3", "topk"]
TopkKL = Literal["none", "forward", "reverse"]
TeacherTrust = Literal["none", "gate", "scale"]
BetaSchedule = Literal["constant", "linear", "cosine"]

ALGORITHMS: tuple[str, ...] = typing.get_args(Algorithm)
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
KL_ESTIMATORS: tuple[str, ...] = typing.get_args(KLEstimator)
KD_ESTIMATORS: tuple[str, ...] = typing.get_args(KDEstimator)
TOPK_KLS: tuple[str, ...] = typing.get_args(TopkKL)
TEACHER_TRUSTS: tuple[str, ...] = typing.get_args(TeacherTrust)
BETA_SCHEDULES: tuple[str, ...] = typing.get_args(BetaSchedule)


@dataclass
class LossConfig:
    """Which policy loss to optimise and its hyper-parameters.

    The defaults are the paper's (arXiv 2602.22495, Sec. 4 and Appendix B) where it gives them.
    """

    algorithm: Algorithm = "rlad"
    """``rlad`` (TRRD, Eq. 3-5), ``grpo`` (GRPO/DAPO surrogate), ``kdrl`` (GRPO + beta * reverse KL to the
    teacher on sampled tokens) or ``sft`` (token cross-entropy, offline distillation)."""

    alpha: float = 0.5
    """TRRD: weight on the OLD student in the geometric anchor; 1.0 is exactly GRPO, towards 0 anchors on the
    teacher. Range [0, 1]."""

    eps_low: float = 0.20
    """Lower clip range: the ratio is clipped below at ``1 - eps_low``. Range [0, 1)."""

    eps_high: float = 0.28
    """Upper clip range (DAPO clip-higher): the ratio is clipped above at ``1 + eps_high``. >= 0."""

    teacher_log_ratio_clip: float = 1.0
    """TRRD: ``c``, the clamp applied to ``log pi_S - log pi_T`` before the ``(1 - alpha)`` weight (App. B). > 0."""

    dual_clip_c: float | None = None
    """Dual-clip bound for negative advantages (per-token loss capped at ``-c * A`` when ``A < 0``); ``None`` off.
    Must be > 1 when set. Applies to ``rlad``, ``grpo`` and ``kdrl``."""

    kl_beta: float = 0.0
    """Weight of the reference-policy KL(pi_S || pi_ref) term; 0 disables it (then no reference log-probs are
    needed). >= 0."""

    kl_estimator: KLEstimator = "k3"
    """Per-token estimator of the reference KL: ``k1``, ``k2`` or ``k3``."""

    entropy_coef: float = 0.0
    """Entropy bonus coefficient (the loss gets ``- entropy_coef * H``); 0 disables it. >= 0."""

    kd_beta: float = 5e-3
    """KDRL: weight of the reverse KL(pi_S || pi_T) on sampled tokens at the start of training. >= 0."""

    kd_beta_final: float | None = 1e-3
    """KDRL: weight at the end of training, reached by ``kd_beta_schedule``; ``None`` keeps ``kd_beta``."""

    kd_beta_schedule: BetaSchedule = "linear"
    """KDRL: how the weight moves from ``kd_beta`` to ``kd_beta_final`` with training progress."""

    kd_estimator: KDEstimator = "k3"
    """KDRL: per-token estimator of the reverse KL to the teacher on the sampled token (``k1``, ``k2``, ``k3``), or
    ``topk``: the exact KL over the teacher's top-k tokens plus a tail bucket, in the direction ``topk_kl``."""

    kd_skip_correct: bool = False
    """KDRL: drop the KL term on responses the verifier marked correct (needs ``correct`` per response)."""

    topk_kl: TopkKL = "none"
    """Distribution term over the teacher's top-``topk_k`` tokens per position with a tail bucket for the rest of
    the mass: ``none`` (off), ``forward`` (KL(teacher || student)) or ``reverse`` (KL(student || teacher)). It is
    added to rlad/grpo/kdrl with weight ``topk_beta``, or is KDRL's penalty with ``kd_estimator=topk``."""

    topk_k: int = 64
    """Teacher tokens per position for ``topk_kl`` (the teacher sends ``topk_k`` ids and log-probs). >= 1."""

    topk_beta: float = 0.0
    """Weight of the top-k KL added to the policy loss (a KDRL-style auxiliary term); needs ``topk_kl``. >= 0."""

    teacher_trust: TeacherTrust = "none"
    """Lower the teacher's weight on prompts the teacher itself fails (per-prompt ``teacher_pass_rate`` from
    ``rlad-megatron teacher-trust``): ``none``; ``gate`` (teacher off, i.e. plain GRPO for rlad, where the pass
    rate is below ``teacher_trust_threshold``); ``scale`` (weight ``min(1, pass_rate / threshold)``). Acts on
    rlad's alpha per response and on the teacher KL terms (kdrl, topk)."""

    teacher_trust_threshold: float = 0.5
    """Pass rate from which the teacher is fully trusted (``teacher_trust``). In (0, 1]."""

    aggregation: Aggregation = "seq-mean-token-mean"
    """How per-token losses become one scalar; the paper's Eq. 1 is ``seq-mean-token-mean``."""

    max_response_len: int | None = None
    """Fixed normaliser of ``seq-mean-token-sum-norm`` (Dr. GRPO); required for that aggregation only."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LossConfig":
        """Build from a mapping; unknown keys fail with their names. The result is validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"loss: unknown key(s) {unknown}; known keys are {sorted(known)}")
        config = cls(**dict(values))
        config.validate()
        return config

    def validate(self, section: str = "loss") -> "LossConfig":
        """Check every field; raise ``ConfigError`` naming the first bad one as ``{section}.{field}`` (``loss``
        inside a run config). Returns ``self``."""

        def key(name: str) -> str:
            return f"{section}.{name}"

        choice(key("algorithm"), self.algorithm, Algorithm)
        choice(key("aggregation"), self.aggregation, Aggregation)
        choice(key("kl_estimator"), self.kl_estimator, KLEstimator)
        choice(key("kd_estimator"), self.kd_estimator, KDEstimator)
        choice(key("topk_kl"), self.topk_kl, TopkKL)
        choice(key("teacher_trust"), self.teacher_trust, TeacherTrust)
        choice(key("kd_beta_schedule"), self.kd_beta_schedule, BetaSchedule)
        in_range(key("alpha"), self.alpha, 0.0, 1.0)
        in_range(key("eps_low"), self.eps_low, 0.0, 1.0, high_open=True)
        in_range(key("eps_high"), self.eps_high, 0.0, math.inf)
        greater_than(key("teacher_log_ratio_clip"), self.teacher_log_ratio_clip, 0)
        if self.dual_clip_c is not None:
            greater_than(key("dual_clip_c"), self.dual_clip_c, 1)
        for name in ("kl_beta", "entropy_coef", "kd_beta"):
            in_range(key(name), getattr(self, name), 0.0, math.inf)
        if self.kd_beta_final is not None:
            in_range(key("kd_beta_final"), self.kd_beta_final, 0.0, math.inf)
        if not isinstance(self.kd_skip_correct, bool):
            raise ConfigError(f"{key('kd_skip_correct')} must be true or false, got {self.kd_skip_correct!r}")
        self._validate_teacher_signals(key)
        length = self.max_response_len
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length <= 0):
            raise ConfigError(f"{key('max_response_len')} must be null or a positive integer, got {length!r}")
        if self.aggregation == "seq-mean-token-sum-norm" and length is None:
            raise ConfigError(f"{key('max_response_len')} must be a positive integer when aggregation is "
                              "'seq-mean-token-sum-norm' (its fixed normaliser)")
        return self

    def topk_in_kd(self) -> bool:
        """Whether the top-k KL is KDRL's penalty (``algorithm=kdrl``, ``kd_estimator=topk``)."""
        return self.algorithm == "kdrl" and self.kd_estimator == "topk"

    def uses_topk(self) -> bool:
        """Whether the loss has a top-k KL term (KDRL's penalty or the auxiliary ``topk_beta`` term)."""
        return self.topk_in_kd() or self.topk_beta > 0

    def learns_only_from_group_advantages(self) -> bool:
        """Whether every term of the loss that learns the task is weighted by the group-relative advantage
        (rlad's and grpo's surrogate, the RL half of kdrl: ``A_i = r_i - mean`` over the responses of one prompt,
        :mod:`rlad_megatron.loss.advantages`). With one response per prompt every advantage is 0 and such a loss
        learns nothing; kdrl's reverse KL to the teacher (``kd_beta``) and a top-k term (``topk_beta``) learn
        without advantages (the reference KL and the entropy bonus only regularise)."""
        if self.algorithm == "sft":
            return False
        kd = self.algorithm == "kdrl" and (self.kd_beta > 0 or bool(self.kd_beta_final))
        return not kd and self.topk_beta == 0

    def _validate_teacher_signals(self, key) -> None:
        if isinstance(self.topk_k, bool) or not isinstance(self.topk_k, int) or self.topk_k < 1:
            raise ConfigError(f"{key('topk_k')} must be an int >= 1, got {self.topk_k!r}")
        in_range(key("topk_beta"), self.topk_beta, 0.0, math.inf)
        in_range(key("teacher_trust_threshold"), self.teacher_trust_threshold, 0.0, 1.0, what="a number")
        greater_than(key("teacher_trust_threshold"), self.teacher_trust_threshold, 0)  # a pass rate in (0, 1]
        if self.uses_topk() and self.topk_kl == "none":
            what = "kd_estimator=topk" if self.topk_in_kd() else f"topk_beta={self.topk_beta!r}"
            raise ConfigError(f"{key(what)} needs {key('topk_kl')}=forward or reverse (KDRL's direction is "
                              "reverse)")
        if self.topk_beta > 0 and self.algorithm == "sft":
            raise ConfigError(f"{key('topk_beta')} > 0 needs the student's own samples ({key('algorithm')}=rlad, "
                              "grpo or kdrl), not sft")
        if self.topk_kl != "none" and not self.uses_topk():
            raise ConfigError(f"{key('topk_kl')}={self.topk_kl} has no effect: set {key('topk_beta')} > 0, or "
                              f"{key('kd_estimator')}=topk with {key('algorithm')}=kdrl")
        if self.teacher_trust != "none" and not (self.algorithm in ("rlad", "kdrl") or self.uses_topk()):
            raise ConfigError(f"{key('teacher_trust')}={self.teacher_trust} has no effect: "
                              f"{key('algorithm')}={self.algorithm} has no teacher term (use rlad or kdrl, or a "
                              f"top-k term, {key('topk_beta')} > 0)")

    def kd_beta_at(self, progress: float) -> float:
        """KDRL weight at ``progress`` in [0, 1] (fraction of training done), following ``kd_beta_schedule``."""
        if not (_finite(progress) and 0.0 <= progress <= 1.0):
            raise ValueError(f"progress must be a fraction of training in [0, 1], got {progress!r}")
        end = self.kd_beta if self.kd_beta_final is None else self.kd_beta_final
        if self.kd_beta_schedule == "constant" or end == self.kd_beta:
            return float(self.kd_beta)
        if self.kd_beta_schedule == "linear":
            weight = progress
        else:  # cosine: slow start, slow end
            weight = 0.5 * (1.0 - math.cos(math.pi * progress))
        return float(self.kd_beta + (end - self.kd_beta) * weight)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


TOPK_INPUTS: tuple[str, ...] = ("student_topk_logprobs", "teacher_topk_logprobs")
"""The top-k KL's inputs: the student's and the teacher's log-probs at the teacher's top-k ids."""


def as_loss_config(config: LossConfig | str) -> LossConfig:
    """A validated :class:`LossConfig`; an algorithm name stands for its defaults."""
    if isinstance(config, str):
        config = LossConfig(algorithm=config)  # type: ignore[arg-type]
    if not isinstance(config, LossConfig):
        raise TypeError(f"config must be a LossConfig or an algorithm name, got {type(config).__name__}")
    return config.validate()


def required_inputs(config: LossConfig | str) -> frozenset[str]:
    """Names of the ``compute_policy_loss`` keyword inputs this config needs besides logprobs/mask/denominators:
    the loss's declared inputs, which every caller asks (the trainer computes exactly these; whether a run needs a
    teacher follows from them, :func:`rlad_megatron.config.teacher_use`)."""
    cfg = as_loss_config(config)
    need: set[str] = set()
    if cfg.algorithm in ("rlad", "grpo", "kdrl"):
        need |= {"old_logprobs", "advantages"}
    if cfg.algorithm in ("rlad", "kdrl"):
        need.add("teacher_logprobs")
    if cfg.algorithm == "kdrl" and cfg.kd_skip_correct:
        need.add("correct")
    if cfg.kl_beta > 0:
        need.add("ref_logprobs")
    if cfg.entropy_coef > 0:
        need.add("entropy")
    if cfg.uses_topk():
        need.update(TOPK_INPUTS)
    if cfg.teacher_trust != "none":
        need.add("teacher_pass_rate")
    return frozenset(need)
