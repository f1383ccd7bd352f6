"""flan_jax.text."""
