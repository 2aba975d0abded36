"""Tiny Hugging Face causal LMs for the CPU demo, the examples, benchmarks and tests: building them and a plain
supervised warm start (not the product's trainer)."""
