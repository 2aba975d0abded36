"""Prompt datasets, procedural tasks (demo arithmetic, Knights and Knaves, math) and the task registry."""
