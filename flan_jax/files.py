"""Result files that are either complete or absent: written under a temporary name, then renamed into place.

A write cut short (a full disk, Ctrl-C, a crash) leaves at most the temporary file, which the failed
writer removes, so a rerun never takes a half-written result for a finished one. In a bucket (gs://,
s3://) a result is one object, uploaded when complete (flan_jax.storage); a result of several files (an
exported model) is written to a local temporary directory first and then uploaded with its marker, the file
whose presence says "complete", last (`local_output`, `publish`).
"""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator, Optional, Sequence

from flan_jax import storage


def temporary(path: str) -> str:
  return storage.temporary(path)


# Locally: a temporary file NAME.tmp renamed into place, removed on failure; in a bucket: one object upload
# when the block ends (storage.replacing).
replacing = storage.replacing


def write_json(path: str, value: Any, indent: Optional[int] = 2) -> None:
  with replacing(path) as f:
    json.dump(value, f, indent=indent)


# ---------------------------------------------------------------------------------------------
# Outputs of several files (a model directory) bound for a bucket.


@contextlib.contextmanager
def local_output(path: str) -> Iterator[str]:
  """The local directory to write an output bound for `path` into: `path` itself when it is local; for a bucket,
  a fresh temporary directory, removed when the block ends, whose files `publish` uploads. Writers that know
  only local files (safetensors, the gguf package) then write a bucket output unchanged, and nothing reaches the
  bucket before the output is complete."""
  if not storage.is_remote(path):
    yield path
    return
  scratch = tempfile.mkdtemp(prefix="flan_jax_output_")
  try:
    yield scratch
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def publish(local: str, path: str, marker: str, remove: Sequence[str] = ()) -> None:
  """Uploads the files of the local directory `local` into the bucket directory `path`, so that no reader sees a
  mix of two outputs looking complete: the `marker` already at `path` (an earlier output's) is removed first,
  then the names in `remove` (an earlier output's files that this one does not write again), then each file of
  `local` is uploaded whole as one object, the marker last."""
  previous = storage.join(path, marker)
  if storage.isfile(previous):
    storage.remove(previous)
  for name in remove:
    if name != marker and storage.isfile(storage.join(path, name)):
      storage.remove(storage.join(path, name))
  names = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs)
  for name in sorted(names, key=lambda name: name == marker):  # the marker last
    storage.copy_local_to(os.path.join(local, name), storage.join(path, *name.split(os.sep)))


# ---------------------------------------------------------------------------------------------
# Undoing an output the block failed to finish.


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
  alone. In a bucket, where an output is uploaded only once complete and its marker last (`publish`), only an
  upload cut short has anything to undo: the objects it added or replaced (told apart by their versions).
  """
  if storage.is_remote(path):
    with _removed_from_bucket_on_failure(path, marker):
      yield
    return
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


_ABSENT = object()


@contextlib.contextmanager
def _removed_from_bucket_on_failure(path: str, marker: str) -> Iterator[None]:
  """removed_on_failure for a bucket path: the objects under it compared by version before and after."""
  before = storage.content_keys(path)
  try:
    yield
  except BaseException:
    try:  # best effort: the store may be what failed; the block's own error is the one to raise
      after = storage.content_keys(path)
      if not before:
        if after:
          storage.rmtree(path, ignore_errors=True)
      else:
        changed = [name for name, key in after.items() if before.get(name, _ABSENT) != key]
        for name in changed + ([marker] if changed and marker in after and marker not in changed else []):
          storage.remove(storage.join(path, name) if name else path)
    except Exception:  # noqa: BLE001
      pass
    raise
