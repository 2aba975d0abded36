"""Pools of their own beside the learner: the teacher pool (``teacher.placement: separate``).

- ``world``: one torchrun job split into the learner's world and the Megatron teacher ranks' world, and the bridge
  group of their replica leaders;
- ``wire``: the messages (token ids to the pool; per-token log-probs, optionally top-k, back);
- ``client``: the learner side (teacher ranks over the bridge, or a vLLM teacher engine process);
- ``server``: the teacher replicas' serving loop; ``teacher_rank``: what a teacher rank of the job runs;
- ``build``: the trainer's pooled teacher for a run config.

docs/large_models.md ("The teacher pool") describes the layout and the step's timeline.
"""
