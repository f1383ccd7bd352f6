"""Result files that are either complete or absent: written under a temporary name, then renamed into place.

A write cut short (a full disk, Ctrl-C, a crash) leaves at most the temporary file, which the failed
writer removes, so a rerun never takes a half-written result for a finished one. In a bucket (gs://,
s3://) a result is one object, uploaded when complete (flan_jax.storage).
"""

import contextlib
import json
import os
import shutil
from typing import Any, Iterator, Optional

from flan_jax import storage


def temporary(path: str) -> str:
  return storage.temporary(path)


# Locally: a temporary file NAME.tmp renamed into place, removed on failure; in a bucket: one object upload
# when the block ends (storage.replacing).
replacing = storage.replacing


def write_json(path: str, value: Any, indent: Optional[int] = 2) -> None:
  with replacing(path) as f:
    json.dump(value, f, indent=indent)


def _snapshot(path: str) -> Optional[dict]:
  """name -> (size, mtime) of a directory's entries; None when `path` is not a directory."""
  if not os.path.isdir(path):
    return None
  out = {}
  for name in os.listdir(path):
    with contextlib.suppress(OSError):
      st = os.stat(os.path.join(path, name))
      out[name] = (st.st_size, st.st_mtime_ns)
  return out


@contextlib.contextmanager
def removed_on_failure(path: str, marker: str = "config.json") -> Iterator[None]:
  """Undoes a directory (or file) output that the block failed to finish, so it never looks complete.

  A `path` that did not exist before is removed whole. In a directory that did, the entries the block
  added or changed are removed, and then also `marker` (the file whose presence says "complete"), so a mix
  of old and new files is not taken for a finished output; a directory the block did not touch is left
  alone.
  """
  existed = os.path.lexists(path)
  before = _snapshot(path)
  try:
    yield
  except BaseException:
    if not existed:
      with contextlib.suppress(OSError):
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    elif before is not None:
      after = _snapshot(path) or {}
      changed = [name for name, stat in after.items() if before.get(name) != stat]
      for name in changed + ([marker] if changed and marker in after else []):
        target = os.path.join(path, name)
        with contextlib.suppress(OSError):
          shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)
    raise
