"""The RLAD trainer: one step, the loop, checkpoint/resume, and run observability (metrics, progress, plots)."""
