"""A reward function and a dataset schema of your own, trained from one YAML (README.md)."""
