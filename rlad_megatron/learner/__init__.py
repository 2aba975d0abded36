"""The Megatron learner: DDP/optimizer setup, forward-backward, checkpoints."""
