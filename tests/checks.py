"""Assertions the tests share, written so that they cannot pass on nothing.

- `assert_trees_equal` / `assert_trees_close`: two pytrees have the same structure (the same keys, the same
  number of leaves, at least one) and every leaf the same shape, dtype and values (bit for bit, or within a
  tolerance). A restored tree that came back empty or partial fails, where a `zip` over two leaf lists would
  pass.
- `one_line`: what a user sees on standard error is exactly one line. Give it everything written to file
  descriptor 2 (a subprocess's stderr, or pytest's `capfd`): TensorFlow, XLA and absl write there natively, past
  Python's `sys.stderr`, so `capsys` would not see them.
- `cannot_set_up`: a test whose environment this machine cannot provide skips, except under CI, where it
  fails (tests/conftest.py also fails a CI run on any skip that is not accelerator-only).
- `one_line_error`: a function called in the test's process raises a UserError whose message (what the binaries
  print after "error: ") is one line.
- `run_main`: a binary's main run in this process (cheaper than a subprocess) with its exit code and all of
  file descriptor 2.
"""

import os
from typing import Optional

import jax
import numpy as np
import pytest


def leaf_pairs(a, b) -> list:
  """The two pytrees' leaves, paired; fails unless both have the same structure and at least one leaf."""
  a_leaves, a_def = jax.tree.flatten(a)
  b_leaves, b_def = jax.tree.flatten(b)
  assert a_def == b_def, f"the trees differ in structure:\n{a_def}\n{b_def}"
  assert a_leaves, "nothing to compare: the trees have no leaves"
  return list(zip(a_leaves, b_leaves, strict=True))


def _leaves(a, b):
  leaf_pairs(a, b)  # the structure and non-empty checks
  return zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b), strict=True)


def assert_trees_equal(a, b) -> None:
  """Same structure, at least one leaf, and every leaf bit-identical (shape and dtype included)."""
  for (path, x), y in _leaves(a, b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape and x.dtype == y.dtype, (jax.tree_util.keystr(path), x.shape, x.dtype, y.shape,
                                                       y.dtype)
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_trees_close(a, b, rtol: float = 1e-6, atol: float = 0.0) -> None:
  """Same structure, at least one leaf, every leaf the same shape and within the tolerance."""
  for (path, x), y in _leaves(a, b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, (jax.tree_util.keystr(path), x.shape, y.shape)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def one_line(err: str, what: str = "") -> str:
  """The only line in `err` (all of file descriptor 2); fails, showing it (and `what` it came from), when there is
  none or more."""
  lines = err.strip().splitlines()
  assert len(lines) == 1, f"expected one line on stderr{' from ' + what if what else ''}, got {len(lines)}:\n" \
                          f"{err[-3000:]}"
  return lines[0]


def one_line_error(call, match: Optional[str]) -> str:
  """`call()` raises a UserError matching `match` (None: any) whose message is one line (gin's own note, which
  the binaries drop, aside); returns the message."""
  from flan_jax.errors import UserError
  with pytest.raises(UserError, match=match) as e:
    call()
  message = str(e.value).split("\n  In call to configurable")[0]
  assert "\n" not in message, message
  return message


def run_main(module, argv, capfd) -> tuple[int, str]:
  """Runs a binary's main in this process; returns (exit code, everything written to file descriptor 2)."""
  import gin

  from flan_jax import cli
  capfd.readouterr()  # what came before is not this run's
  gin.clear_config()
  try:
    with pytest.raises(SystemExit) as exit_info:
      cli.run(module.main, argv)
  finally:
    gin.clear_config()
  return exit_info.value.code, capfd.readouterr().err


def cannot_set_up(reason: str):
  """Skips the test for want of `reason`, or fails it under CI, where the environment must provide it."""
  if os.environ.get("CI"):
    pytest.fail(f"cannot set up the test: {reason} (CI is set, so this fails instead of skipping)", pytrace=False)
  pytest.skip(reason)
