"""Helpers for tests, benchmarks and the demo: multi-rank runner, tiny model builders."""
