"""The math task: record layouts (GSM8K, MATH, Skywork-OR1), prompt, and the math-verify reward."""
