"""The step benchmark's task: the sum of two numbers, answered directly."""
