"""Training: the NNX trainer, its engine and checkpoints."""
