"""flan_jax's instruction tasks and mixtures; importing this package registers them with seqio."""

from tasks import embedded

embedded.register_all()
