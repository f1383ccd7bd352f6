"""Where a user's paths live: a local disk, or a bucket (gs://bucket/path, s3://bucket/path).

Every path a user gives flan_jax (MODEL_DIR, CHECKPOINT_PATH, ...) is `check`ed here once, and the files
on it are read and written through the functions below. A local path behaves exactly as with `os` and
`open`: a whole file is written under NAME.tmp and renamed into place, so a reader sees it complete or
not at all. A bucket path goes through fsspec (gcsfs, s3fs), the backend `etils.epath` (and with it orbax)
uses for buckets; `as_epath` hands orbax the same path. An object store has no rename: a whole file is
one object upload (one request, or a resumable upload finalized at the end), which the store makes
visible only when complete, so a bucket never shows half a file either. A file that must be written by a
library that writes only to a local disk (tf.data's iterator state, TensorBoard events) is written to
local scratch and copied with `copy_local_to`; one that must be read locally with `copy_to_local`.

The fsspec backend is used for buckets whatever EPATH_USE_TF says, so the tests (against a local GCS
server, which TensorFlow's GCS client cannot reach) and a real bucket run the same code.
"""

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
from typing import Any, Iterator, Optional

from etils import epath
import fsspec

from flan_jax.errors import UserError

SCHEMES = ("gs", "s3")  # the object stores flan_jax reads and writes
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_ONE_SLASH = re.compile(r"^(gs|s3):/(?!/)")


def scheme(path: str) -> Optional[str]:
  """'gs' or 's3' for a bucket path; None for a local one."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def check(path: str, name: str = "path") -> str:
  """`path` after checking flan_jax can use it (a UserError naming `name`, the setting, otherwise).

  Refused: a scheme other than gs:// and s3://, a bucket URL without a path inside the bucket, and a
  local path starting with `gs:/` or `s3:/` (one slash: a bucket URL mistyped).
  """
  path = os.fspath(path)
  found = scheme(path)
  if found is None:
    if _ONE_SLASH.match(path):
      raise UserError(f"{name}={path!r} starts with {path[:4]!r} (one slash): did you mean "
                      f"{path[:4]}/{path[4:]!r}? A local folder named {path[:3]!r} is refused as a likely typo")
    return path
  if found not in SCHEMES:
    raise UserError(f"{name}={path!r}: flan_jax cannot read or write {found}:// paths; use a local path, "
                    "gs://bucket/path or s3://bucket/path")
  bucket, _, rest = path[len(found) + 3:].partition("/")
  if not bucket:
    raise UserError(f"{name}={path!r} names no bucket; pass {found}://<bucket>/<path>")
  if not rest.strip("/"):
    raise UserError(f"{name}={path!r} is a whole bucket; pass a folder inside it, e.g. {found}://{bucket}/run1")
  return path


def absolute(path: str) -> str:
  """os.path.abspath for a local path; a bucket path with its trailing slashes and `//` removed."""
  path = os.fspath(path)
  found = scheme(path)
  if found is None:
    return os.path.abspath(path)
  return f"{found}://" + posixpath.normpath(path[len(found) + 3:]).lstrip("/")


def join(path: str, *names: str) -> str:
  if is_remote(path):
    return posixpath.join(os.fspath(path), *names)
  return os.path.join(path, *names)


def basename(path: str) -> str:
  return posixpath.basename(os.fspath(path).rstrip("/")) if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
  return posixpath.dirname(os.fspath(path).rstrip("/")) if is_remote(path) else os.path.dirname(path)


def as_epath(path: str) -> epath.Path:
  """The path as orbax takes it: an absolute local path, or the bucket URL."""
  return epath.Path(absolute(path))


# ---------------------------------------------------------------------------------------------
# Reading and listing.


def _fs(path: str):
  """The fsspec file system of a bucket path. Listings are not cached: other clients (orbax's tensorstore,
  other hosts) write into the same directories."""
  return fsspec.filesystem(scheme(path), use_listings_cache=False, skip_instance_cache=False)


def _forget(path: str) -> None:
  """Drops what every cached file system of the bucket's kind remembers of `path` and its folder: orbax's
  (through etils.epath) lists directories with a cache, which a change made here would leave stale."""
  for fs in list(getattr(type(_fs(path)), "_cache", {}).values()):
    fs.invalidate_cache(_bare(path))
    fs.invalidate_cache(_bare(dirname(path)))


def exists(path: str) -> bool:
  return _fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  """For a bucket: whether any object lies under `path`/ (buckets have no empty folders)."""
  return _fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """The names in a directory (os.listdir's order locally; sorted in a bucket)."""
  if not is_remote(path):
    return os.listdir(path)
  fs = _fs(path)
  if not fs.isdir(path):
    raise FileNotFoundError(2, "No such directory", path)
  return sorted({posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)} - {""})


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _fs(path).cat_file(path)
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str, encoding: str = "utf-8") -> str:
  if is_remote(path):
    return read_bytes(path).decode(encoding)
  with open(path, encoding=encoding) as f:
    return f.read()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def size(path: str) -> int:
  return _fs(path).size(path) if is_remote(path) else os.path.getsize(path)


def files_under(path: str) -> list[str]:
  """Every file under a directory, recursively, as full paths, sorted."""
  if not is_remote(path):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
  return sorted(f"{scheme(path)}://{name}" for name in _fs(path).find(path))


def relative(path: str, start: str) -> str:
  """os.path.relpath; for a bucket, the part of `path` under `start` ('/'-separated)."""
  if not is_remote(path):
    return os.path.relpath(path, start)
  return posixpath.relpath(_bare(path), _bare(start))


def open_binary(path: str):
  """A file open for reading bytes, seekable (a bucket's object is read by ranges, not whole)."""
  return _fs(path).open(path, "rb") if is_remote(path) else open(path, "rb")


# ---------------------------------------------------------------------------------------------
# Writing: each file whole or not at all.


def temporary(path: str) -> str:
  return path + ".tmp"


@contextlib.contextmanager
def replacing(path: str, mode: str = "w", **kwargs) -> Iterator[Any]:
  """Opens a file that becomes `path` when the block ends normally; any failure leaves `path` as it was.

  Locally a temporary file NAME.tmp renamed into place (removed on failure). For a bucket, a local
  temporary file uploaded as one object when the block ends.
  """
  if is_remote(path):
    fd, local = tempfile.mkstemp(prefix="flan_jax_upload_")
    os.close(fd)
    try:
      with open(local, mode, **kwargs) as f:
        yield f
      _fs(path).put_file(local, path)
    finally:
      os.remove(local)
    return
  tmp = temporary(path)
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the result
      e.filename = path
    raise


def write_bytes(path: str, data: bytes) -> None:
  if is_remote(path):
    _fs(path).pipe_file(path, data)  # one upload: the object appears whole
    return
  with replacing(path, "wb") as f:
    f.write(data)


def write_text(path: str, text: str, encoding: Optional[str] = None) -> None:
  """Writes `text` whole (locally in the platform's default encoding unless `encoding` is given, as `open`)."""
  if is_remote(path):
    write_bytes(path, text.encode(encoding or "utf-8"))
    return
  with replacing(path, "w", **({"encoding": encoding} if encoding else {})) as f:
    f.write(text)


def write_json(path: str, value: Any, indent: Optional[int] = 2) -> None:
  write_text(path, json.dumps(value, indent=indent))


def makedirs(path: str) -> None:
  """Creates a local directory and its parents (no-op if it exists); nothing for a bucket, which has no
  folders: objects under a path make it one."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  if is_remote(path):
    _fs(path).rm_file(path)
    _forget(path)
  else:
    os.remove(path)


def rmtree(path: str, ignore_errors: bool = False) -> None:
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=ignore_errors)
    return
  try:
    _fs(path).rm(path, recursive=True)
  except (FileNotFoundError, OSError):
    if not ignore_errors:
      raise
  finally:
    _forget(path)


def rename(src: str, dst: str) -> None:
  """os.rename locally. In a bucket every object under `src` is copied to `dst`, then `src` removed:
  not atomic, so only for moving a finished or abandoned thing aside (a damaged checkpoint)."""
  if not is_remote(src):
    os.rename(src, dst)
    return
  fs = _fs(src)
  if fs.exists(dst):
    raise FileExistsError(17, "File exists", dst)
  if fs.isdir(src):
    for name in fs.find(src):
      relative = posixpath.relpath(name, _bare(src))
      fs.copy(f"{scheme(src)}://{name}", join(dst, relative))
    fs.rm(src, recursive=True)
  else:
    fs.copy(src, dst)
    fs.rm_file(src)
  _forget(src)
  _forget(dst)


def _bare(path: str) -> str:
  """A bucket path as fsspec lists it: without the scheme and trailing slashes."""
  return path[len(scheme(path)) + 3:].rstrip("/")


# ---------------------------------------------------------------------------------------------
# Local copies, for libraries that read or write only local files.


def copy_local_to(local: str, dst: str) -> None:
  """Copies a local file, or a local directory's files (recursively), to `dst`, each file whole.

  Locally a directory is copied beside `dst` and renamed into place (replacing `dst`); in a bucket each
  file is uploaded as one object, files at the top of `local` last, in name order, so a marker file
  there (e.g. a record whose presence says "complete") is written after the rest.
  """
  if os.path.isfile(local):
    if is_remote(dst):
      _fs(dst).put_file(local, dst)
    else:
      with replacing(dst, "wb") as out, open(local, "rb") as f:
        shutil.copyfileobj(f, out)
    return
  if not is_remote(dst):
    tmp = temporary(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(local, tmp)
    if os.path.isdir(dst):
      shutil.rmtree(dst)
    os.rename(tmp, dst)
    return
  names = sorted((os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs),
                 key=lambda name: (os.sep not in name, name))
  fs = _fs(dst)
  for name in names:
    fs.put_file(os.path.join(local, name), join(dst, *name.split(os.sep)))


def copy_to_local(src: str, local: Optional[str] = None) -> str:
  """A local copy of a file or directory `src` (the path itself when it is local); `local` is where to put
  it, else a fresh folder under the system's temporary directory, kept for the process's life."""
  if not is_remote(src):
    return src
  if local is None:
    digest = hashlib.sha256(absolute(src).encode()).hexdigest()[:16]
    local = os.path.join(tempfile.mkdtemp(prefix=f"flan_jax_{digest}_"), basename(src))
  fs = _fs(src)
  if fs.isdir(src):
    os.makedirs(local, exist_ok=True)
    for name in fs.find(src):
      target = os.path.join(local, *posixpath.relpath(name, _bare(src)).split("/"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      fs.get_file(f"{scheme(src)}://{name}", target)
  else:
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    fs.get_file(src, local)
  return local
