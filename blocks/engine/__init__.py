"""The training engine: optimizers and schedules, checkpoints, the training loop."""
