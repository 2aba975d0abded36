"""Frozen models that score the student's samples: the :class:`Teacher` interface (per-token log-probs of a batch)
with a Megatron implementation (same TP/PP layout as the learner) and a vLLM one (a scoring engine); a teacher in a
pool of its own (``teacher.placement: separate``) is ``rlad_megatron.pools.teacher.PooledTeacher``; several teachers,
each scoring the prompts routed to it, are :class:`RoutedTeachers` (routing: :class:`TeacherRouter`).

The KL reference policy (``loss.kl_beta > 0``, a frozen copy of the initial student) is a Megatron teacher too.
"""
from rlad_megatron.teacher.base import Teacher
from rlad_megatron.teacher.megatron import MegatronTeacher
from rlad_megatron.teacher.routed import RoutedTeachers
from rlad_megatron.teacher.routing import TeacherRouter
from rlad_megatron.teacher.vllm import VLLMTeacher

__all__ = ["MegatronTeacher", "RoutedTeachers", "Teacher", "TeacherRouter", "VLLMTeacher"]
