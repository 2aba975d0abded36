"""The CPU demo task: multi-digit addition with a digit-wise chain of thought (task, demo data writer)."""
