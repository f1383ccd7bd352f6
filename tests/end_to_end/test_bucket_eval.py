"""Eval following a run in a bucket (gs://, on the local GCS server of tests/storage_server.py): a checkpoint step
that lands while the eval watches is evaluated once it is whole, never while it is half uploaded, and every result
and predictions file is written into the bucket. And where train and eval find TFDS data: TFDS_DATA_DIR (tested
on a local folder: TensorFlow's own GCS client, which TFDS uses for gs://, cannot reach the local server)."""

import json
import threading
import time

import gin
import jax
import pytest
import seqio
import tensorflow_datasets as tfds

from flan_jax import cli, storage
from flan_jax.checkpoints import paths
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.model import partitioning
from flan_jax.training import trainer
import flan_tasks  # noqa: F401
from tests.conftest import TINY

LENGTHS = {"inputs": 64, "targets": 16}
TASK = "embedded_movie_review_scoring_t0"  # one task: the eval is about following, not scoring


def _result(model_dir, step):
  return storage.join(model_dir, f"eval_{TASK}_validation_step{step}.json")


def _wait_for(predicate, seconds, what):
  deadline = time.monotonic() + seconds
  while not predicate():
    assert time.monotonic() < deadline, f"gave up waiting for {what}"
    time.sleep(0.1)


def test_eval_follows_a_run_in_a_bucket_and_waits_for_a_step_to_be_whole(gcs_dir, tmp_path):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  model_dir = f"{gcs_dir}/run"
  trainer.train(model_dir, mixture_or_task_name="embedded_no_sentiment", task_feature_lengths=LENGTHS, batch_size=4,
                model_config=TINY, train_steps=4, checkpoint_period=2, log_every=2, mesh=mesh,
                async_checkpointing=False)
  step4 = storage.join(model_dir, paths.SUBDIR, "4")
  assert storage.exists(storage.join(step4, paths.COMMIT_FILE))  # orbax marks a whole step in a bucket
  # Step 4 is taken out of the bucket, to land again while the eval follows the run.
  local = storage.copy_to_local(step4, str(tmp_path / "4"))
  storage.rmtree(step4)

  follow_seconds = 10.0
  out, failed = [], []

  def follow():
    try:
      out.extend(evaluation.evaluate(model_dir, mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                                     num_examples=4, batch_size=4, mesh=mesh, follow_seconds=follow_seconds))
    except BaseException as e:  # reported by the test, in its own thread
      failed.append(e)

  thread = threading.Thread(target=follow, daemon=True)
  thread.start()
  _wait_for(lambda: failed or storage.exists(_result(model_dir, 2)), 300, "step 2's results")
  assert not failed, failed
  # Every file of step 4 but orbax's commit file: a step being uploaded, which the eval must leave alone.
  names = sorted(storage.relative(f, local) for f in storage.files_under(local))
  assert paths.COMMIT_FILE in names
  for name in names:
    if name != paths.COMMIT_FILE:
      storage.copy_local_to(storage.join(local, name), storage.join(step4, name))
  time.sleep(follow_seconds / 3)  # the eval looks at the run every follow_seconds / 4 seconds
  assert not failed and not storage.exists(_result(model_dir, 4))
  storage.copy_local_to(storage.join(local, paths.COMMIT_FILE), storage.join(step4, paths.COMMIT_FILE))
  thread.join(timeout=300)
  assert not thread.is_alive() and not failed, failed

  assert [r["step"] for r in out] == [2, 4]  # each step once, in order; then no new step for follow_seconds
  for step in (2, 4):
    assert storage.read_json(_result(model_dir, step))["step"] == step
    lines = storage.read_text(storage.join(model_dir, f"predictions_{TASK}_validation_step{step}.jsonl")).splitlines()
    assert lines and {json.loads(line)["step"] for line in lines} == {step}  # every line whole


def test_a_checkpoint_path_in_a_bucket_that_does_not_exist_is_one_line(gcs_dir):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  with pytest.raises(UserError, match="does not exist"):
    evaluation.evaluate(f"{gcs_dir}/nothing", mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                        batch_size=4, mesh=mesh, follow_seconds=1.0)


# TFDS_DATA_DIR.


class FlanJaxTfdsDirTest(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS dataset prepared by the test (no download), unknown to TFDS's registry: it is found only by
  looking in the folder it was prepared in, as a flan_* task's prepared data is."""
  VERSION = tfds.core.Version("1.0.0")
  # A module name of one part: TFDS then looks for no source folder of the builder, which (for a module in a
  # package, as this test is) needs the importlib_resources package this environment does not install.
  __module__ = "flan_jax_tfds_dir_test"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"text": f"example {i}"}


@pytest.fixture
def tfds_task(tmp_path):
  """(a registered seqio task reading the test's TFDS dataset, the folder it is prepared in)."""
  data_dir = str(tmp_path / "tfds")
  FlanJaxTfdsDirTest(data_dir=data_dir).download_and_prepare()
  name = "flan_jax_tfds_dir_test"
  task = seqio.TaskRegistry.add(name, seqio.TfdsDataSource("flan_jax_tfds_dir_test:1.0.0", splits=["train"]),
                                output_features={})
  try:
    yield task, data_dir
  finally:
    seqio.TaskRegistry.remove(name)
    data_lib.use_tfds_data_dir(None)  # TFDS's default again, for the tests that follow in this process
    gin.clear_config()


def _texts(task):
  return [ex["text"] for ex in task.source.get_dataset("train", shuffle=False).as_numpy_iterator()]


@pytest.mark.parametrize("gin_file", ["runs/finetune.gin", "runs/eval.gin"])
def test_tfds_data_dir_sets_where_train_and_eval_read_tfds_data(tfds_task, gin_file):
  task, data_dir = tfds_task
  cli.configure_gin(cli.Flags(gin_files=[gin_file], gin_bindings=[f"TFDS_DATA_DIR = '{data_dir}'"]))
  if gin_file == "runs/eval.gin":
    assert data_lib.use_tfds_data_dir() == data_dir  # as evaluate() calls it
  else:
    data_lib.get_dataset("embedded_movie_review", {"inputs": 64, "targets": 16}, "train", 4)  # as training does
  assert task.source.tfds_dataset.data_dir == data_dir
  assert _texts(task) == [b"example 0", b"example 1", b"example 2"]
  gin.clear_config()
  assert data_lib.use_tfds_data_dir() is None  # the default (TFDS's own folder) takes over again
  assert task.source.tfds_dataset.data_dir is None
  with pytest.raises(Exception, match="flan_jax_tfds_dir_test"):  # not prepared there
    _texts(task)


@pytest.mark.parametrize("value, says", [("hdfs://nn/tfds", "hdfs://"), ("gs:/typo/tfds", "one slash"),
                                         ("", "TFDS_DATA_DIR"), ("s3://bucket/tfds", "cannot read s3://")])
def test_a_tfds_data_dir_flan_jax_cannot_use_is_one_line(value, says):
  with pytest.raises(UserError, match=f"TFDS_DATA_DIR.*{says}|{says}"):
    data_lib.use_tfds_data_dir(value)
