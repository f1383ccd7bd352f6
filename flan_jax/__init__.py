"""flan_jax: FLAN-style instruction tuning in JAX (seqio tasks, a sharded Flax trainer, zero-shot eval)."""
