"""Frozen models that score the student's samples: the :class:`Teacher` interface (per-token log-probs of a batch)
with a Megatron implementation (same TP/PP layout as the learner), a vLLM one (a scoring engine) and a pooled one
(a teacher pool of its own: ``teacher.placement: separate``, rlad_megatron/pools/).

The KL reference policy (``loss.kl_beta > 0``, a frozen copy of the initial student) is a Megatron teacher too.
"""
from rlad_megatron.teacher.base import Teacher
from rlad_megatron.teacher.megatron import MegatronTeacher
from rlad_megatron.teacher.pooled import PooledTeacher
from rlad_megatron.teacher.vllm import VLLMTeacher

__all__ = ["MegatronTeacher", "PooledTeacher", "Teacher", "VLLMTeacher"]
