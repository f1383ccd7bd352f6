"""flan_jax.reports."""
