"""Training: optimizer, sharded state, jitted step, checkpoints and the loop (see trainer.train)."""
