"""Training: losses, checkpoints, tracking."""
