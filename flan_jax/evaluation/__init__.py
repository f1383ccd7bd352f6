"""flan_jax.evaluation."""
