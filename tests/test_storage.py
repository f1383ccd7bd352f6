"""flan_jax.storage on a local disk and in a bucket on a local GCS server (tests/storage_server.py)."""

import json
import os
import subprocess
import sys

import pytest

from flan_jax import files, storage
from tests.checks import one_line_error


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """A fresh directory: a local one, or a folder in the local GCS server's bucket."""
  if request.param == "local":
    return str(tmp_path / "run")
  return request.getfixturevalue("gcs_dir")


def test_write_read_list_and_remove(root):
  storage.makedirs(root)
  storage.write_json(storage.join(root, "a.json"), {"x": 1})
  storage.write_text(storage.join(root, "b.txt"), "hé")
  storage.write_bytes(storage.join(root, "sub", "c.bin") if storage.is_remote(root) else
                      (storage.makedirs(storage.join(root, "sub")) or storage.join(root, "sub", "c.bin")), b"\0\1")
  assert storage.read_json(storage.join(root, "a.json")) == {"x": 1}
  assert storage.read_text(storage.join(root, "a.json")) == json.dumps({"x": 1}, indent=2)
  assert storage.read_text(storage.join(root, "b.txt")) == "hé"
  assert storage.read_bytes(storage.join(root, "sub", "c.bin")) == b"\0\1"
  assert storage.size(storage.join(root, "sub", "c.bin")) == 2
  assert sorted(storage.listdir(root)) == ["a.json", "b.txt", "sub"]
  assert storage.isdir(root) and storage.isdir(storage.join(root, "sub")) and not storage.isfile(root)
  assert storage.isfile(storage.join(root, "a.json")) and not storage.isdir(storage.join(root, "a.json"))
  assert not storage.exists(storage.join(root, "missing")) and not storage.isdir(storage.join(root, "missing"))
  with pytest.raises(FileNotFoundError):
    storage.read_text(storage.join(root, "missing"))
  with pytest.raises(FileNotFoundError):
    storage.listdir(storage.join(root, "missing"))
  storage.remove(storage.join(root, "b.txt"))
  assert sorted(storage.listdir(root)) == ["a.json", "sub"]
  storage.rmtree(storage.join(root, "sub"))
  assert storage.listdir(root) == ["a.json"]
  storage.rmtree(storage.join(root, "missing"), ignore_errors=True)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(root):
  storage.makedirs(root)
  path = storage.join(root, "result.json")
  storage.write_json(path, {"old": True})
  with pytest.raises(RuntimeError):
    with files.replacing(path) as f:
      f.write('{"new": ')
      raise RuntimeError("cut short")
  assert storage.read_json(path) == {"old": True}
  assert storage.listdir(root) == ["result.json"]
  with files.replacing(path) as f:
    f.write('{"new": true}')
  assert storage.read_json(path) == {"new": True}
  files.write_json(storage.join(root, "other.json"), [1, 2], indent=None)
  assert storage.read_text(storage.join(root, "other.json")) == "[1, 2]"


def test_rename_moves_a_directory(root):
  storage.makedirs(storage.join(root, "7", "params"))
  storage.write_text(storage.join(root, "7", "params", "x"), "x")
  storage.write_text(storage.join(root, "7", "meta"), "m")
  storage.rename(storage.join(root, "7"), storage.join(root, "7.damaged"))
  assert storage.listdir(root) == ["7.damaged"]
  assert storage.read_text(storage.join(root, "7.damaged", "params", "x")) == "x"
  assert storage.read_text(storage.join(root, "7.damaged", "meta")) == "m"


def test_copies_between_local_scratch_and_the_path(root, tmp_path):
  scratch = tmp_path / "scratch"
  (scratch / "deep").mkdir(parents=True)
  (scratch / "deep" / "a").write_text("a")
  (scratch / "record.json").write_text("{}")
  storage.makedirs(root)
  target = storage.join(root, "copy")
  storage.copy_local_to(str(scratch), target)
  assert sorted(storage.listdir(target)) == ["deep", "record.json"]
  assert storage.read_text(storage.join(target, "deep", "a")) == "a"
  storage.copy_local_to(str(scratch / "record.json"), storage.join(root, "single.json"))
  assert storage.read_text(storage.join(root, "single.json")) == "{}"
  back = storage.copy_to_local(target, str(tmp_path / "back"))
  assert open(os.path.join(back, "deep", "a")).read() == "a"
  assert open(os.path.join(back, "record.json")).read() == "{}"
  one = storage.copy_to_local(storage.join(root, "single.json"))
  assert open(one).read() == "{}"
  if not storage.is_remote(root):
    assert back == target and one == storage.join(root, "single.json")  # a local path is its own copy


def test_local_writes_are_the_bytes_they_always_were(tmp_path):
  path = str(tmp_path / "x.json")
  storage.write_json(path, {"a": [1, 2]})
  with open(path) as f:
    assert f.read() == json.dumps({"a": [1, 2]}, indent=2)
  assert os.listdir(tmp_path) == ["x.json"]


def test_paths_are_joined_and_made_absolute_without_touching_a_bucket_url(tmp_path):
  assert storage.absolute("gs://b/run//x/") == "gs://b/run/x"
  assert storage.absolute("rel") == os.path.abspath("rel")
  assert storage.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert storage.basename("gs://b/run/3/") == "3" and storage.dirname("gs://b/run/3") == "gs://b/run"
  assert str(storage.as_epath("gs://b/run/")) == "gs://b/run"
  assert storage.check("s3://b/run") == "s3://b/run" and storage.check(str(tmp_path)) == str(tmp_path)
  assert storage.check("./gs:/b") == "./gs:/b"  # a folder named gs: that is not at the start is the user's


@pytest.mark.parametrize("path, says", [
    ("hdfs://namenode/run", "cannot read or write hdfs:// paths"),
    ("gs://bucket", "is a whole bucket"),
    ("gs://bucket/", "is a whole bucket"),
    ("s3://bucket//", "is a whole bucket"),
    ("gs:///run", "names no bucket"),
    ("gs:/bucket/run", "one slash"),
])
def test_bad_paths_are_one_line(path, says):
  message = one_line_error(lambda: storage.check(path, "MODEL_DIR"), None)
  assert says in message and "MODEL_DIR=" in message


def test_a_command_reaches_buckets_through_fsspec_even_with_tensorflow_installed(tmp_path):
  """startup.prepare() (the start of every command) makes etils.epath, and with it orbax, use the client the
  storage layer and these tests use, where it would otherwise pick TensorFlow's gfile."""
  code = ("import tensorflow\nfrom etils import epath\n{}\n"
          "print(type(epath.Path('gs://bucket/run')._backend).__name__)")
  env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
  said = [subprocess.run([sys.executable, "-c", code.format(prepare)], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
          for prepare in ("", "from flan_jax import startup; startup.prepare()")]
  assert said == ["_TfBackend", "_FileSystemSpecBackend"]


def test_an_object_is_created_only_if_absent_and_replaced_only_from_the_version_read(gcs_dir):
  path = storage.join(gcs_dir, "lock")
  assert storage.version(path) is None
  first = storage.write_if(path, b"one", None)
  assert first is not None and storage.write_if(path, b"two", None) is None
  seen = storage.version(path)
  assert seen.token == first and 0 <= seen.age < 30
  second = storage.write_if(path, b"three", first)
  assert second not in (None, first) and storage.write_if(path, b"four", first) is None  # a stale version
  assert storage.read_bytes(path) == b"three"
  assert not storage.remove_if(path, first) and storage.exists(path)
  assert storage.remove_if(path, second) and not storage.exists(path)
