"""Training: loops, EMA, checkpointing and resumption."""
