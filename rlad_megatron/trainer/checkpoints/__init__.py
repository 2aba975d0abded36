"""The run's folder and checkpoints: the trainer's checkpoint state, typed, that saves and loads itself (``state``),
and preparing, identifying and resuming an output folder (``run_dir``). The folder layout of one checkpoint is
``rlad_megatron.checkpoint_files`` (``convert`` reads it too)."""
