"""Training: the loop (CPU, one GPU, or many with torchrun/DDP) and the super-resolution stage's batches."""
