"""What a run shows and leaves behind: per-step metrics (``logger``: JSONL, TensorBoard, progress bar; ``wandb_log``),
the metrics file (``metrics_file``), the curves (``plots``) and the periodic evaluation (``periodic_eval``)."""
