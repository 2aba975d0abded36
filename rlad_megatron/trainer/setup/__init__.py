"""Building a run: first every check that needs no process group and no model (``checks.check_run``), then the
construction of its components (``components.build_components``); ``engine_settings`` derives the rollout engine's
settings for this machine."""
