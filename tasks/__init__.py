"""flan_jax's instruction tasks and mixtures; importing this package registers them with seqio.

It registers the offline embedded collection (`embedded_*`) and the FLAN collection (`flan_*`,
TFDS-backed; nothing is read or downloaded until a task's data is requested).
"""

from tasks import embedded
from tasks import flan

embedded.register_all()
flan.register_all()
