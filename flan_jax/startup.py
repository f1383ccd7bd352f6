"""What a command does to the interpreter before its heavy imports; nothing here runs on import.

A command (`python -m flan_jax.X`) calls `prepare()` from its `if __name__ == "__main__":` block,
before it imports TensorFlow, seqio and JAX, so that Ctrl-C during those imports is one line and
TensorFlow's C++ start-up lines never reach the terminal. `cli.run` turns on JAX's persistent
compilation cache. A library user who imports flan_jax's modules gets none of this unless they ask.
Imports nothing from flan_jax.
"""

import contextlib
import os
import sys


def prepare(tensorflow: bool = True) -> None:
  """The start of every command: the Ctrl-C hook, one backend for buckets, then TensorFlow imported quietly
  (except for a command that never uses it: tensorflow=False)."""
  install_interrupt_hook()
  use_fsspec_for_buckets()
  if tensorflow:
    import_tensorflow_quietly()


def use_fsspec_for_buckets() -> None:
  """etils.epath (and with it orbax's directory work) reaches gs:// and s3:// through fsspec, as
  flan_jax.storage does, not through TensorFlow's gfile, which it would pick whenever TensorFlow is
  installed: one client for every bucket operation, the one the tests run against a local GCS server
  (TensorFlow's GCS client cannot be pointed at one). EPATH_USE_TF set by the user wins."""
  os.environ.setdefault("EPATH_USE_TF", "false")


def install_interrupt_hook() -> None:
  """Ctrl-C before `cli.run` starts (while the command imports TensorFlow and JAX) becomes one line; Python
  then ends the process by SIGINT, which a shell reports as 130. Other exceptions keep the hook there was."""
  previous = sys.excepthook
  if getattr(previous, "_flan_jax_interrupt_hook", False):
    return

  def hook(kind, value, tb) -> None:
    if issubclass(kind, KeyboardInterrupt):
      print("error: interrupted (Ctrl-C) while starting; nothing was written", file=sys.stderr, flush=True)
      return
    previous(kind, value, tb)

  hook._flan_jax_interrupt_hook = True
  sys.excepthook = hook


def import_tensorflow_quietly() -> None:
  """TensorFlow's C++ start-up writes info lines to stderr that no setting turns off; drop them.

  Only the import itself is muted; an import error is still raised (and printed) as usual.
  """
  if "tensorflow" in sys.modules:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  with stderr_muted():
    import tensorflow as tf
  # TensorFlow only runs the input pipeline: it must not take GPU memory from JAX (as in t5x).
  tf.config.set_visible_devices([], "GPU")


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache, so a rerun of the same job skips compiling.

  JAX_COMPILATION_CACHE_DIR (or jax.config) wins; otherwise $XDG_CACHE_HOME/flan_jax/jax, by
  default ~/.cache/flan_jax/jax.
  """
  import jax
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    return
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  jax.config.update("jax_compilation_cache_dir", os.path.join(cache_home, "flan_jax", "jax"))


@contextlib.contextmanager
def stderr_muted():
  """Sends file descriptor 2 (Python's and native libraries' stderr) to /dev/null for the block."""
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
