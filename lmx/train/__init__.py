"""The builder, the pure train / eval steps, optimizer, checkpoints, loop."""
