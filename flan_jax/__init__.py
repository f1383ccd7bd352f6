"""flan_jax: FLAN-style instruction tuning in JAX (seqio tasks, a sharded Flax trainer, zero-shot eval)."""

import os as _os
import sys as _sys


def _import_tensorflow_quietly() -> None:
  """TensorFlow's C++ start-up writes info lines to stderr that no setting turns off; drop them.

  Only the import itself is muted; an import error is still raised (and printed) as usual.
  """
  if "tensorflow" in _sys.modules:
    return
  _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  _sys.stderr.flush()
  saved, devnull = _os.dup(2), _os.open(_os.devnull, _os.O_WRONLY)
  _os.dup2(devnull, 2)
  try:
    import tensorflow  # noqa: F401
  finally:
    _os.dup2(saved, 2)
    _os.close(saved)
    _os.close(devnull)


_import_tensorflow_quietly()
