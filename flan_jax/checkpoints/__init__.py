"""flan_jax.checkpoints."""
