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

Longer than most modules, and one job: every byte flan_jax reads or writes at a user's path passes through
here, so that no other module needs to know whether a path is local or in a bucket. Its sections: paths,
reading, writing whole files, conditional writes (the bucket lock's), local copies, and the local staging
cache of bucket files (models read from a bucket).
"""

import contextlib
import datetime
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
from typing import Any, Iterator, NamedTuple, Optional

from etils import epath
import fsspec

from flan_jax import errors
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


def check_reachable(path: str, name: str = "path") -> None:
  """For a bucket path, one listing request: a UserError naming `name` when the bucket does not exist, access
  to it is denied or the store cannot be reached, before any work is done. Nothing for a local path."""
  if not is_remote(path):
    return
  bucket, _, key = _bare(path).partition("/")
  fs = _fs(path)
  try:
    if scheme(path) == "s3":
      fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
    else:
      fs.call("GET", "b/{}/o", bucket, prefix=key, maxResults=1, json_out=True)
  except FileNotFoundError as e:
    raise UserError(f"{name}={path!r}: bucket {bucket!r} does not exist (or these credentials cannot see it); "
                    f"create it or pass a path in another bucket") from e
  except (OSError, ValueError) as e:
    raise UserError(f"{name}={path!r}: cannot use bucket {bucket!r}: {str(e).splitlines()[0] or type(e).__name__}; "
                    "check the credentials and that the object store is reachable") from e


_TENSORSTORE_UNAVAILABLE = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED)\b.*\b(gs|s3)://", re.S)


def unavailable(e: BaseException) -> Optional[str]:
  """Why a bucket could not be reached, when that is what `e` (or what it was raised from or during) says: the
  bucket clients' own errors after their retries (aiohttp's and botocore's connection errors, a 5xx from gcsfs),
  or tensorstore's UNAVAILABLE / DEADLINE_EXCEEDED on a bucket path; else None."""
  for seen in errors.chain(e):
    module, name, text = type(seen).__module__ or "", type(seen).__name__, str(seen).strip()
    code = getattr(seen, "code", None)
    if (module.startswith(("aiohttp", "botocore")) and re.search(r"Connect|Disconnect|Timeout", name)) or (
        module.startswith("gcsfs") and isinstance(code, int) and code >= 500) or _TENSORSTORE_UNAVAILABLE.search(text):
      return text.splitlines()[0][:200] if text else type(seen).__name__
  return None


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
  """The path as orbax takes it: an absolute local path, or the bucket URL.

  For a bucket, the file systems fsspec makes from then on (etils.epath's, which orbax lists step folders with)
  keep no listing cache, as this module's own do not: other processes and hosts write the same folders, and a
  folder set aside here (a damaged step) would otherwise still be listed by a cache filled concurrently.
  """
  if is_remote(path):
    for protocol in ("gs", "gcs", "s3", "s3a"):
      fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
  return epath.Path(absolute(path))


# ---------------------------------------------------------------------------------------------
# Reading and listing.


def _fs(path: str):
  """The fsspec file system of a bucket path. Listings are not cached: other clients (orbax's tensorstore,
  other hosts) write into the same directories."""
  return fsspec.filesystem(scheme(path), use_listings_cache=False, skip_instance_cache=False)


def forget(path: str) -> None:
  """Drops what every cached file system of the bucket's kind remembers of `path` and its folder: orbax's
  (through etils.epath) lists directories with a cache, which a change made here, or by another process (a
  checkpoint step a training run saved since), would leave stale."""
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


def open_binary(path: str, block_size: Optional[int] = None):
  """A file open for reading bytes, seekable (a bucket's object is read by ranges of `block_size` bytes, default
  the client's: gcsfs reads 5 MiB ahead, too much for a few samples of a big file)."""
  if not is_remote(path):
    return open(path, "rb")
  return _fs(path).open(path, "rb", **({"block_size": block_size} if block_size else {}))


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


def copy_file(src: str, dst: str) -> None:
  """`dst` becomes a copy of the file `src`, whole. On a local disk a hard link where it can (it needs no space,
  so it works on a full disk), else a copy, either made under NAME.tmp and renamed into place; in a bucket
  one object upload."""
  if is_remote(dst) or is_remote(src):
    write_bytes(dst, read_bytes(src))
    return
  tmp = temporary(dst)
  if os.path.lexists(tmp):  # left by a writer that was killed
    os.remove(tmp)
  try:
    os.link(src, tmp)
  except OSError:
    shutil.copyfile(src, tmp)
  os.replace(tmp, dst)


def makedirs(path: str) -> None:
  """Creates a local directory and its parents (no-op if it exists); nothing for a bucket, which has no
  folders: objects under a path make it one."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  if is_remote(path):
    _fs(path).rm_file(path)
    forget(path)
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
    forget(path)


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
  forget(src)
  forget(dst)


def _bare(path: str) -> str:
  """A bucket path as fsspec lists it: without the scheme and trailing slashes."""
  return path[len(scheme(path)) + 3:].rstrip("/")


# ---------------------------------------------------------------------------------------------
# Conditional writes: an object written only if absent, or only if it is still the version one read.
# What a lock in a bucket is built from (training/run_lock.py); object stores have no flock.


class Version(NamedTuple):
  """One version of a bucket object: `token` (GCS: its generation; S3: its ETag) and its age in seconds,
  the store's last-modified time against this machine's clock."""
  token: str
  age: float


def version(path: str) -> Optional[Version]:
  """The live version of the object at bucket path `path`; None when there is none."""
  fs = _fs(path)
  try:
    info = fs.info(path, refresh=True) if scheme(path) == "s3" else fs.info(path)
  except FileNotFoundError:
    return None
  if scheme(path) == "gs":
    token, modified = str(info["generation"]), info.get("mtime") or info["updated"]
  else:
    token, modified = info["ETag"], info["LastModified"]
  if isinstance(modified, str):
    modified = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00"))
  return Version(token, time.time() - modified.timestamp())


def write_if(path: str, data: bytes, token: Optional[str]) -> Optional[str]:
  """Writes the object at bucket path `path` only if its live version is `token` (None: only if there is
  no object); the new version's token when written, None when the precondition failed. The store checks
  the precondition and writes in one step, so of two writers racing on the same token exactly one wins."""
  bucket, _, key = _bare(path).partition("/")
  fs = _fs(path)
  if scheme(path) == "s3":
    condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
    try:
      reply = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
    except OSError as e:  # s3fs turns botocore's ClientError into an OSError, the reply kept on its cause
      reply = getattr(e.__cause__, "response", None) or {}
      if (reply.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")
          or reply.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412)):
        return None  # 412: the condition did not hold; 409: another conditional write to the key raced this one
      raise
    finally:
      forget(path)
    return reply["ETag"]
  # GCS: a multipart upload (metadata and bytes in one request) with ifGenerationMatch (0: no live object).
  boundary = "flan_jax_" + os.urandom(8).hex()
  body = b"".join([f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                   json.dumps({"name": key}).encode(),
                   f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(), data,
                   f"\r\n--{boundary}--".encode()])
  try:
    reply = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{bucket}/o", uploadType="multipart",
                    ifGenerationMatch="0" if token is None else token, data=body, json_out=True,
                    headers={"Content-Type": f'multipart/related; boundary="{boundary}"'})
  except FileExistsError:  # gcsfs's name for 412 Precondition Failed
    return None
  finally:
    forget(path)
  return str(reply["generation"])


def remove_if(path: str, token: str) -> bool:
  """Removes the object at bucket path `path` if its live version is still `token`; whether it did."""
  bucket, _, key = _bare(path).partition("/")
  fs = _fs(path)
  try:
    # Checked just before as well: S3's general-purpose buckets take no condition on a delete (and the local
    # GCS server of the tests ignores it), so there the check-then-delete leaves a short window.
    if (current := version(path)) is None or current.token != token:
      return False
    if scheme(path) == "s3":
      fs.call_s3("delete_object", Bucket=bucket, Key=key)
    else:
      fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=token)
    return True
  except (FileNotFoundError, FileExistsError):
    return False
  finally:
    forget(path)


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


# ---------------------------------------------------------------------------------------------
# Staging: a local cache of bucket files
#
# A library that memory-maps a file (safetensors, the gguf package) needs it on a local disk. `staged` gives a
# local copy of a bucket file or directory, kept in a cache keyed by each object's version (GCS: its
# generation; S3: its version id or ETag) so the next run reuses it, and fetches again only the objects that
# changed. Each object is downloaded (streamed, never whole in memory) under a temporary name in its version's
# folder and renamed into place when complete, so a download cut short is never taken for a copy. A directory
# is assembled from hard links to its objects' copies (no second copy on disk), in a folder built aside and
# renamed into place. Each host stages its own copy; processes racing on one object each download it and the
# last rename wins, with the same bytes.

from collections.abc import Callable

_KEY_FIELDS = ("generation", "VersionId", "ETag", "etag", "md5Hash", "LastModified", "updated", "mtime")
_PART = ".part_"  # the prefix of a download or directory not yet complete


def staging_root() -> str:
  """The staging cache: $FLAN_JAX_CACHE, else $XDG_CACHE_HOME/flan_jax/staged (by default
  ~/.cache/flan_jax/staged)."""
  if os.environ.get("FLAN_JAX_CACHE"):
    return os.path.abspath(os.path.expanduser(os.environ["FLAN_JAX_CACHE"]))
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache_home, "flan_jax", "staged")


def _content_key(info: dict) -> Optional[str]:
  """What identifies an object's contents in fsspec's `info` of it: its version and size; None when the store
  gives no version (the object is then fetched at every staging)."""
  for field in _KEY_FIELDS:
    if info.get(field) not in (None, ""):
      return f"{field}={info[field]};size={info.get('size')}"
  return None


def content_keys(path: str) -> dict[str, Optional[str]]:
  """'/'-separated name under `path` -> what identifies that object's contents, for every object under a bucket
  directory (one listing); {'': key} for a single object; {} when nothing is there."""
  fs = _fs(path)
  try:
    info = fs.info(path)
  except FileNotFoundError:
    return {}
  if info.get("type") != "directory":
    return {"": _content_key(info)}
  return {name: _content_key(entry) for name, entry in _objects(path)}


def _objects(path: str) -> list[tuple[str, dict]]:
  """(name under `path`, '/'-separated; fsspec's info) of every object under a bucket directory, by name."""
  found = _fs(path).find(path, detail=True).items()
  return sorted((posixpath.relpath(name, _bare(path)), entry) for name, entry in found
                if entry.get("type") != "directory" and not name.endswith("/"))


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def staged(path: str, include: Optional[Callable[[str], bool]] = None) -> str:
  """A local path holding what the file or directory `path` holds: `path` itself when it is local; for a bucket,
  its copy in the staging cache (staging_root), fetched now only where the cache has no copy of an object's
  current version.

  `include` picks, by its '/'-separated name under a directory, which files the local directory gets (default:
  all), so a model's unused files (another framework's weights) are never fetched. The directory's copy holds
  exactly those files (none, if `include` picks none); it is a new folder whenever one of them changed, and older
  copies of the same selection are removed. Raises FileNotFoundError when nothing is at `path`.
  """
  if not is_remote(path):
    return path
  path, fs = absolute(path), _fs(path)
  info = fs.info(path)  # FileNotFoundError when nothing is there
  root = staging_root()
  try:
    os.makedirs(root, exist_ok=True)
  except OSError as e:
    raise UserError(f"the staging cache {root} cannot be created ({e.strerror}); set FLAN_JAX_CACHE to a local "
                    f"folder this user can write, with room for {path}") from e
  if not os.access(root, os.W_OK):
    raise UserError(f"the staging cache {root} is not writable; set FLAN_JAX_CACHE to a local folder this user "
                    f"can write, with room for {path}")
  if info.get("type") != "directory":
    return _staged_object(path, info, root)
  listed = [(name, entry) for name, entry in _objects(path) if include is None or include(name)]
  keys = [(name, _content_key(entry)) for name, entry in listed]
  folder = os.path.join(root, "directories", _digest(json.dumps([path, [name for name, _ in keys]])))
  version = _digest(json.dumps(keys))
  local = os.path.join(folder, version, basename(path))
  if os.path.isdir(local) and all(key is not None for _, key in keys):
    return local
  copies = {name: _staged_object(f"{scheme(path)}://{_bare(path)}/{name}", entry, root) for name, entry in listed}
  os.makedirs(folder, exist_ok=True)
  part = tempfile.mkdtemp(prefix=_PART, dir=folder)
  try:
    os.makedirs(os.path.join(part, basename(path)))  # also when `include` picks nothing: an empty directory
    for name, copy in copies.items():
      target = os.path.join(part, basename(path), *name.split("/"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      try:
        os.link(copy, target)  # the same file twice on disk costs nothing
      except OSError:
        shutil.copyfile(copy, target)
    if any(key is None for _, key in keys):  # a copy without keys to trust is replaced
      shutil.rmtree(os.path.join(folder, version), ignore_errors=True)
    try:
      os.rename(part, os.path.join(folder, version))
    except OSError:  # another process put the same copy in place first: that one stays
      if not os.path.isdir(local):
        raise
  finally:
    shutil.rmtree(part, ignore_errors=True)
  _remove_others(folder, version)
  return local


def _staged_object(url: str, info: dict, root: str, tries: int = 3) -> str:
  """The local copy of the object at `url` (`info`: fsspec's info of it), fetched unless its version is cached.

  An object rewritten during the download is fetched again, so a copy always holds the version it is filed under.
  """
  fs, folder = _fs(url), os.path.join(root, "objects", _digest(url))
  for _ in range(tries):
    key = _content_key(info)
    version = _digest(key) if key is not None else "unversioned"
    local = os.path.join(folder, version, posixpath.basename(url))
    if key is not None and os.path.isfile(local) and os.path.getsize(local) == info.get("size"):
      return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=_PART, dir=os.path.dirname(local))
    os.close(fd)
    try:
      fs.get_file(url, part)
      if info.get("size") is not None and os.path.getsize(part) != info["size"]:
        raise OSError(f"{url}: downloaded {os.path.getsize(part)} bytes of {info['size']}")
      now = fs.info(url)
      if key is not None and _content_key(now) != key:  # rewritten meanwhile: fetch the new version
        info = now
        continue
      os.replace(part, local)
    finally:
      with contextlib.suppress(OSError):
        os.remove(part)
    _remove_others(folder, version)
    return local
  raise OSError(f"{url} kept changing while it was being downloaded ({tries} tries); try again")


def _remove_others(folder: str, keep: str) -> None:
  """Removes the older copies in `folder` (a process still reading one keeps its open files)."""
  for name in os.listdir(folder):
    if name != keep and not name.startswith(_PART):
      target = os.path.join(folder, name)
      with contextlib.suppress(OSError):
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
