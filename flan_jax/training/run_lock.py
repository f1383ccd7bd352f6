"""One trainer per MODEL_DIR: an advisory file lock that the kernel releases when its holder dies.

`MODEL_DIR/.lock` is held with flock(2) for the whole run by the job's first process (one lock per
job, however many hosts it has). A second trainer on the same directory stops with one line naming
the holder's pid and host. Because the kernel drops a flock when the process holding it exits, a
trainer killed with kill -9 leaves nothing stuck: the file remains, the lock does not.

flock cannot lock an object: a MODEL_DIR in a bucket (gs://, s3://) is not locked yet (issue 25 plans an
object created only if absent and renewed by its holder); use one MODEL_DIR per job there.
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Iterator

import jax
import numpy as np

from flan_jax import storage
from flan_jax.errors import UserError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold(model_dir: str) -> Iterator[None]:
  """Holds MODEL_DIR's lock for the block; a UserError on every process if another run has it."""
  fd, holder = None, None
  if storage.is_remote(model_dir):
    yield
    return
  if jax.process_index() == 0:
    fd, holder = _try_lock(os.path.join(model_dir, LOCK_FILE))
  if jax.process_count() > 1:  # every host learns whether the first one got the lock
    from jax.experimental import multihost_utils
    refused = bool(multihost_utils.broadcast_one_to_all(np.int32(holder is not None)))
    holder = holder or ("another trainer (see the first host's log)" if refused else None)
  if holder is not None:
    raise UserError(f"MODEL_DIR {model_dir} is in use by {holder}; wait for that run to finish or stop "
                    "it, or pass another --gin.MODEL_DIR")
  try:
    yield
  finally:
    if fd is not None:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)


def _try_lock(path: str):
  """(open fd, None) when locked; (None, description of the holder) when another process has it."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None, _describe_holder(path)
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
  return fd, None


def _describe_holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return f"pid {info['pid']} on host {info['host']} (running since {info['since']})"
  except (OSError, ValueError, KeyError):  # the holder has not written its name yet
    return "another trainer"
