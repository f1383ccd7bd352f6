"""One trainer per MODEL_DIR, on a local disk or in a bucket.

The lock is `MODEL_DIR/.lock`, held for the whole run by the job's first process (one lock per job,
however many hosts it has: the others learn from it whether the run may go on). A second trainer on the
same directory stops with one line naming the holder's pid and host.

- On a local disk (or NFS) it is a flock(2) on the file. The kernel drops a flock when the process holding
  it exits, so a trainer killed with kill -9 leaves nothing stuck: the file remains, the lock does not.
- In a bucket (gs://, s3://), where nothing can be flocked, it is an object created only if absent (a GCS
  generation precondition; S3's If-None-Match) that the holder rewrites every RENEW_SECONDS, each time only
  if it is still the version it wrote (a compare-and-swap on the generation / ETag). Nothing releases it
  when its holder is killed, so a lock not renewed for STALE_SECONDS (kill -9, a lost host, a paused VM)
  is taken over by the next trainer, with one line saying so; the swap is conditional, so of two trainers
  taking over at once exactly one wins. A lock whose holder ran on this host under a pid that no longer
  exists is taken over at once. Staleness is the store's last-modified time against this machine's clock,
  so clocks must agree to well within STALE_SECONDS (NTP does this on cloud VMs). A holder that could not
  renew in time and finds its lock taken stops at its next checkpoint without saving (`Held.check`), so
  two trainers never write the same run.
"""

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from flan_jax import storage
from flan_jax.errors import UserError

LOCK_FILE = ".lock"
RENEW_SECONDS = 10.0  # how often the holder of a bucket lock rewrites it
STALE_SECONDS = 60.0  # a bucket lock not rewritten for this long is taken over by the next trainer


class Held:
  """The lock of a running trainer. `check()`, called by every process before each save, raises a UserError
  on all of them if a bucket lock was lost: another trainer took the run over after this one stopped renewing
  (a process paused for longer than STALE_SECONDS, or a long network outage)."""

  def __init__(self, model_dir: str, bucket_lock: Optional["_BucketLock"] = None):
    self.model_dir, self._bucket_lock = model_dir, bucket_lock

  def check(self) -> None:
    if not storage.is_remote(self.model_dir):
      return
    lost = self._bucket_lock.lost if self._bucket_lock is not None else None
    if jax.process_count() > 1:
      taken = bool(multihost_utils.broadcast_one_to_all(np.int32(lost is not None)))
      lost = lost or ("another trainer (see the first host's log)" if taken else None)
    if lost is not None:
      raise UserError(f"MODEL_DIR {self.model_dir} was taken over by {lost} after this trainer did not renew its "
                      f"lock for {STALE_SECONDS:.0f} s; stopping without saving so as not to write over that run")


@contextlib.contextmanager
def hold(model_dir: str, stale_seconds: float = STALE_SECONDS, renew_seconds: float = RENEW_SECONDS
         ) -> Iterator[Held]:
  """Holds MODEL_DIR's lock for the block; a UserError on every process if another run has it."""
  fd, holder, bucket_lock = None, None, None
  if jax.process_index() == 0:
    if storage.is_remote(model_dir):
      bucket_lock = _BucketLock(storage.join(model_dir, LOCK_FILE), stale_seconds, renew_seconds)
      holder = bucket_lock.acquire()
    else:
      fd, holder = _try_lock(os.path.join(model_dir, LOCK_FILE))
  if jax.process_count() > 1:  # every host learns whether the first one got the lock
    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(holder is not None)))
    holder = holder or ("another trainer (see the first host's log)" if refused else None)
  if holder is not None:
    raise UserError(f"MODEL_DIR {model_dir} is in use by {holder}; wait for that run to finish or stop "
                    "it, or pass another --gin.MODEL_DIR")
  try:
    yield Held(model_dir, bucket_lock)
  finally:
    if fd is not None:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)
    if bucket_lock is not None:
      bucket_lock.release()


def _whoami() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _describe(info: dict) -> str:
  return f"pid {info['pid']} on host {info['host']} (running since {info['since']})"


# ---------------------------------------------------------------------------------------------
# A local disk: flock(2).


def _try_lock(path: str):
  """(open fd, None) when locked; (None, description of the holder) when another process has it."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None, _describe_holder(path)
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(_whoami()).encode())
  return fd, None


def _describe_holder(path: str) -> str:
  try:
    with open(path) as f:
      return _describe(json.load(f))
  except (OSError, ValueError, KeyError):  # the holder has not written its name yet
    return "another trainer"


# ---------------------------------------------------------------------------------------------
# A bucket: an object created only if absent, renewed by compare-and-swap, taken over when stale.


class _BucketLock:
  """MODEL_DIR/.lock in a bucket, held by this process from `acquire` to `release`."""

  def __init__(self, path: str, stale_seconds: float, renew_seconds: float):
    self.path, self.stale_seconds, self.renew_seconds = path, stale_seconds, renew_seconds
    self.me = {**_whoami(), "renewed_every_s": renew_seconds, "stale_after_s": stale_seconds}
    self.token: Optional[str] = None  # the version of the lock object this process wrote last
    self.lost: Optional[str] = None  # who took the lock over, once it has been lost
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def acquire(self) -> Optional[str]:
    """None when this process now holds the lock (and renews it); else a description of the holder."""
    body = json.dumps(self.me).encode()
    for _ in range(3):  # the holder may release between our create and our look: then try again
      self.token = storage.write_if(self.path, body, None)
      if self.token is not None:
        break
      current = storage.version(self.path)
      if current is None:
        continue
      info = self._read()
      reason = self._why_stale(info, current.age)
      if reason is None:
        return (f"{_describe(info)}, lock renewed {current.age:.0f} s ago (a lock not renewed for "
                f"{self.stale_seconds:.0f} s is taken over)") if info else "another trainer"
      self.token = storage.write_if(self.path, body, current.token)  # of several takers, one wins
      if self.token is None:
        return "another trainer, which took the stale lock over just now"
      print(f"flan_jax: taking over the lock of MODEL_DIR {storage.dirname(self.path)}: "
            f"{_describe(info) if info else 'its holder'} {reason}", flush=True)
      break
    else:
      return "another trainer"
    self._thread = threading.Thread(target=self._renew, name="flan_jax-run-lock", daemon=True)
    self._thread.start()
    return None

  def _read(self) -> Optional[dict]:
    try:
      info = json.loads(storage.read_bytes(self.path))
      return info if {"pid", "host", "since"} <= set(info) else None
    except (OSError, ValueError):
      return None

  def _why_stale(self, info: Optional[dict], age: float) -> Optional[str]:
    """Why a held lock may be taken over (not renewed for too long, or its holder is dead); else None."""
    if age > self.stale_seconds:
      return f"has not renewed it for {age:.0f} s (more than {self.stale_seconds:.0f} s)"
    if info and info["host"] == socket.gethostname() and not _alive(int(info["pid"])):
      return "is no longer running on this host"
    return None

  def _renew(self) -> None:
    body = json.dumps(self.me).encode()
    while not self._stop.wait(self.renew_seconds):
      try:
        token = storage.write_if(self.path, body, self.token)
      except Exception:  # noqa: BLE001  (a network error: try again at the next renewal)
        continue
      if token is None:  # someone swapped the lock while this process did not renew it
        info = self._read()
        self.lost = _describe(info) if info else "another trainer"
        return
      self.token = token

  def release(self, wait_seconds: float = 5.0) -> None:
    """Stops renewing and removes the lock; given up after `wait_seconds` (a store that stopped answering:
    the lock then goes stale), never raising, since it runs while a failure may be on its way out."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self.token is None or self.lost is not None:
      return

    def remove() -> None:
      with contextlib.suppress(Exception):
        storage.remove_if(self.path, self.token)
    remover = threading.Thread(target=remove, name="flan_jax-run-lock-release", daemon=True)
    remover.start()
    remover.join(wait_seconds)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True
