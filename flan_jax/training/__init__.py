"""flan_jax.training."""
