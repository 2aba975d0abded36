"""Addition whose teacher is systematically wrong on a recognizable subset (final carry-out): a task that can tell
distillation methods apart (task, data writer)."""
