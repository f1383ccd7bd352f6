"""A run directory in an S3 bucket (s3://, on the local moto server of tests/s3_server.py).

What works against s3:// today: every file flan_jax itself writes and reads (flan_jax.storage, through s3fs),
a Hugging Face export into s3:// (of a model on local disk: it needs no orbax in the bucket), and the
conditional writes a lock needs (If-None-Match: * and If-Match: <ETag>, 412 when they do not hold).

What does not: orbax checkpoints, so training, resuming, evaluating and exporting a run in s3:// (the
subset tests/end_to_end/test_bucket.py runs on gs://) cannot run. orbax-checkpoint 0.12.8 builds a
tensorstore spec only for gs:// and local paths: an s3:// directory is normalised to `s3:/bucket/...`,
refused for the array data ("Checkpoint path should be absolute") and taken as a relative LOCAL path for
the `_sharding` files (a folder `s3:` appears in the working directory). Even a spec with the s3 driver
would need its "endpoint" to reach a non-AWS server: tensorstore 0.1.86's s3 kvstore reads no endpoint from
the environment. So a MODEL_DIR in s3:// is refused in one line before anything is written (test below).
"""

import os

import pytest

from flan_jax import storage
from flan_jax.errors import UserError
from tests import tiny_pretrained
from tests.s3_server import s3_bucket, s3_dir, s3_server  # noqa: F401  (fixtures: a local S3 server)


@pytest.fixture
def folder(s3_dir):  # noqa: F811  (the imported fixture, requested by name)
  """A fresh folder of the test's own in the bucket on the local S3 server."""
  return s3_dir


def test_flan_jax_files_round_trip_through_s3(folder, tmp_path):
  run = f"{folder}/run"
  storage.write_json(storage.join(run, "model_config.json"), {"d_model": 64})
  with storage.replacing(storage.join(run, "train_metrics.jsonl")) as f:
    f.write('{"step": 1}\n')
  assert storage.read_json(storage.join(run, "model_config.json")) == {"d_model": 64}
  assert storage.listdir(run) == ["model_config.json", "train_metrics.jsonl"]
  assert storage.isdir(run) and storage.isfile(storage.join(run, "train_metrics.jsonl"))

  local = tmp_path / "vocabulary"
  (local / "sub").mkdir(parents=True)
  (local / "vocabulary.json").write_text("{}")
  (local / "sub" / "a.bin").write_bytes(b"\0\1")
  storage.copy_local_to(str(local), storage.join(run, "vocabulary"))
  assert [storage.relative(p, run) for p in storage.files_under(storage.join(run, "vocabulary"))] == [
      "vocabulary/sub/a.bin", "vocabulary/vocabulary.json"]
  back = storage.copy_to_local(storage.join(run, "vocabulary"), str(tmp_path / "back"))
  assert open(os.path.join(back, "sub", "a.bin"), "rb").read() == b"\0\1"

  storage.rename(storage.join(run, "vocabulary"), storage.join(run, "vocabulary.old"))
  assert storage.listdir(run) == ["model_config.json", "train_metrics.jsonl", "vocabulary.old"]
  storage.rmtree(run)
  assert not storage.exists(storage.join(run, "model_config.json"))


def test_s3_takes_the_conditional_writes_a_lock_needs(folder):
  """The store's side of a lock in a bucket, through s3fs: create-only-if-absent and compare-and-swap."""
  fs = storage._fs(folder)
  bucket, _, key = folder[len("s3://"):].partition("/")
  key += "/.lock"

  def put(body, **condition):
    return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)

  def refused(e):  # s3fs keeps botocore's error as the cause of the OSError it raises
    return e.value.__cause__.response["ResponseMetadata"]["HTTPStatusCode"] == 412

  first = put(b"1", IfNoneMatch="*")["ETag"]
  with pytest.raises(FileExistsError) as e:  # s3fs's name for a failed If-None-Match
    put(b"2", IfNoneMatch="*")
  assert refused(e)
  second = put(b"3", IfMatch=first)["ETag"]
  with pytest.raises(OSError) as e:  # the ETag read before the swap is no longer the live one
    put(b"4", IfMatch=first)
  assert refused(e)
  assert fs.cat_file(f"{bucket}/{key}") == b"3" and second != first


def test_a_failed_precondition_is_none_from_storage_write_if(folder):
  lock = f"{folder}/.lock"
  token = storage.write_if(lock, b"me", None)
  assert token is not None and storage.version(lock).token == token
  assert storage.write_if(lock, b"you", token) is not None  # the swap this process may make
  assert storage.write_if(lock, b"them", token) is None  # a stale token: refused, not raised
  assert storage.write_if(lock, b"them", None) is None  # present: refused, not raised


def test_a_model_dir_in_s3_is_one_line_before_anything_is_written(folder, tmp_path, monkeypatch):
  """orbax-checkpoint has no s3:// support (it normalises s3://b/x to s3:/b/x and refuses it, after writing
  the sharding files into a local folder `s3:`), so a run's checkpoints cannot live there yet."""
  from flan_jax.training import trainer
  from tests.conftest import TINY

  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match=r"checkpoints cannot be kept in s3://.* yet: orbax-checkpoint"):
    trainer.train(f"{folder}/run", mixture_or_task_name="embedded_no_nli_clusters1", train_steps=2, batch_size=4,
                  task_feature_lengths={"inputs": 32, "targets": 8}, model_config=TINY)
  assert not storage.exists(f"{folder}/run") and os.listdir(tmp_path) == []


def test_a_second_trainer_on_an_s3_dir_is_refused(folder):
  from flan_jax.training import run_lock

  with run_lock.hold(folder):
    with pytest.raises(UserError, match=f"is in use by pid {os.getpid()}"):
      with run_lock.hold(folder):
        pass
  with run_lock.hold(folder):  # released
    pass


def test_a_hugging_face_export_into_s3_equals_a_local_one(folder, tmp_path):
  pytest.importorskip("transformers")
  from flan_jax.checkpoints import export as export_lib

  model = str(tmp_path / "llama")
  tiny_pretrained.build("llama", model)
  shard = 60e3 / 2 ** 30  # several safetensors files and an index
  export_lib.export_checkpoint(model, str(tmp_path / "hf"), dtype="float32", max_shard_gb=shard)
  written = export_lib.export_checkpoint(model, f"{folder}/hf", dtype="float32", max_shard_gb=shard)
  assert len(written) > 1

  def files(path):
    return {storage.relative(name, path): storage.read_bytes(name) for name in storage.files_under(path)}

  assert files(f"{folder}/hf") == files(str(tmp_path / "hf"))  # byte for byte, nothing more
