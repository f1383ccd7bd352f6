"""flan_jax's instruction tasks and mixtures; importing this package registers them with seqio.

It registers the offline embedded collection (`embedded_*`) and the FLAN collection (`flan_*`,
TFDS-backed; nothing is read or downloaded until a task's data is requested). TensorFlow's C++
start-up lines are muted while it is first imported, so `python -m flan_tasks` prints only the catalogue.
"""

from flan_jax import startup

startup.import_tensorflow_quietly()

from flan_tasks import (
    embedded,  # noqa: E402
    flan,  # noqa: E402
)

embedded.register_all()
flan.register_all()
