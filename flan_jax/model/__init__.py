"""flan_jax.model."""
