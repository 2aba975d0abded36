"""The pieces of one training step: where the rollouts come from (``rollout_pipeline``), how they are scored and
turned into the learner's batch (``rollouts``, ``truncation``), and the guard that stops a run of non-finite steps."""
