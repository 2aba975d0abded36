"""Multiple-choice questions (GPQA-diamond, MMLU-style): lettered choices, shuffled reproducibly, and a letter
verifier."""
