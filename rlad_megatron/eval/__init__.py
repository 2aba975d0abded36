"""Evaluation: Mean@k / Pass@k over a rollout engine, per-difficulty tables, JSON + markdown reports."""
from rlad_megatron.eval.metrics import mean_at_k, pass_at_k

__all__ = ["mean_at_k", "pass_at_k"]
