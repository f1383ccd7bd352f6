"""flan_jax.data."""
