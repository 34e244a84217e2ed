"""Dataset building, offline and online training, checkpoints."""
