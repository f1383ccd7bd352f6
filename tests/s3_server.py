"""A local S3 server for the tests (moto's server mode, from the PyPI package moto[server]; s3fs talks to it).

`s3_bucket` (session-scoped) starts `moto_server` on 127.0.0.1 on a free port, creates a bucket, and points
the clients at it for the rest of the session, subprocesses included: AWS_ENDPOINT_URL (botocore, and with
it s3fs and etils.epath's fsspec backend), fake credentials and a region, EPATH_USE_TF=false, and
AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE naming empty files, so that no real AWS profile on the
machine is ever read (and the AWS C SDK inside tensorstore does not log a missing ~/.aws/config on every
open). It yields "s3://<bucket>"; each test uses its own folder in it (`s3_dir`).

TensorStore (orbax's array writes) is NOT pointed at the server by this environment: tensorstore 0.1.86's
s3 kvstore reads no endpoint from the environment (AWS_ENDPOINT_URL included; checked: with only the
variable set it dials https://<bucket>.s3.amazonaws.com); only a spec's "endpoint" member reaches a local
server. orbax 0.12.8 builds its own specs and has no s3
support (see tests/end_to_end/test_bucket_s3.py), so orbax checkpoints cannot be written to s3:// here.
"""

import os
import sys
import urllib.request
import uuid

import pytest

from tests.storage_server import LocalServer, environment_set

BUCKET = "flan-jax-test"
REGION = "us-east-1"


class S3Server(LocalServer):
  """moto_server (moto's server mode)."""

  name = "moto_server"

  def __init__(self, root: str):
    super().__init__(root, ready="/moto-api/", timeout=30)

  def command(self) -> list[str]:
    binary = os.path.join(os.path.dirname(sys.executable), "moto_server")
    return ([binary] if os.path.exists(binary) else [sys.executable, "-m", "moto.server"]) + [
        "-H", "127.0.0.1", "-p", str(self.port)]

  def create_bucket(self, name: str) -> None:
    # An unsigned request: moto accepts it, and this needs no AWS client (us-east-1 takes no location body).
    request = urllib.request.Request(f"{self.url}/{name}", method="PUT")
    with urllib.request.urlopen(request, timeout=10):
      pass


def environment(url: str, root: str) -> dict[str, str]:
  """What points botocore (s3fs) and etils.epath at the server at `url`, with fake credentials."""
  empty = os.path.join(root, "aws_config")  # an empty AWS config and credentials file
  open(empty, "a").close()
  return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "AWS_CONFIG_FILE": empty,
          "AWS_SHARED_CREDENTIALS_FILE": empty, "AWS_EC2_METADATA_DISABLED": "true", "EPATH_USE_TF": "false"}


def _forget_s3fs_instances() -> None:
  """s3fs caches its file systems, each with the endpoint of its creation: drop them with the server."""
  try:
    import s3fs
  except ImportError:
    return
  s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
  pytest.importorskip("moto.server", reason="moto[server] is not installed")
  pytest.importorskip("s3fs", reason="s3fs is not installed")
  root = str(tmp_path_factory.mktemp("s3_server"))
  server = S3Server(root)
  _forget_s3fs_instances()
  try:
    with environment_set(environment(server.url, root)):
      server.create_bucket(BUCKET)
      yield server
  finally:
    server.stop()
    _forget_s3fs_instances()


@pytest.fixture(scope="session")
def s3_bucket(s3_server) -> str:
  """s3://<bucket> on the local server."""
  return f"s3://{BUCKET}"


@pytest.fixture
def s3_dir(s3_bucket) -> str:
  """A fresh folder of the test's own in the bucket."""
  return f"{s3_bucket}/{uuid.uuid4().hex[:12]}"
