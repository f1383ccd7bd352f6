"""A run directory in a bucket (gs://, on the local GCS server of tests/storage_server.py), in one process:
train, resume bit-identically to an uninterrupted local run, evaluate into the bucket, set a damaged step
aside; every record, checkpoint, input position and metrics file lands in the bucket, nothing locally."""

import json
import os

import jax
import pytest

from flan_jax import storage
from flan_jax.checkpoints import paths, run_record
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.model import partitioning
from flan_jax.training import run_lock, trainer
import flan_tasks  # noqa: F401
from tests.checks import assert_trees_equal
from tests.conftest import TINY
from tests.end_to_end.test_binaries import ROOT, binary
from tests.end_to_end.test_binaries import TINY as TINY_FLAGS

ARGS = dict(mixture_or_task_name="embedded_no_nli_clusters1", task_feature_lengths={"inputs": 64, "targets": 16},
            batch_size=4, model_config=TINY, checkpoint_period=2, log_every=1, async_checkpointing=False)


def _train(model_dir, steps, **kw):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  return trainer.train(model_dir, train_steps=steps, mesh=mesh, **{**ARGS, **kw})


@pytest.fixture(scope="module")
def bucket_run(gcs_bucket, tmp_path_factory):
  """(state of a local 6-step run, state of a bucket run trained 3 steps then resumed to 6, its MODEL_DIR)."""
  local = _train(str(tmp_path_factory.mktemp("local") / "run"), 6)
  model_dir = f"{gcs_bucket}/e2e/run"
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("cwd"))  # where a mistaken local `gs:` folder would appear
  try:
    _train(model_dir, 3)
    resumed = _train(model_dir, 6)
    assert not os.path.exists("gs:"), "the bucket URL was taken for a local path"
  finally:
    os.chdir(cwd)
  return local, resumed, model_dir


def test_a_run_in_a_bucket_resumes_exactly_as_an_uninterrupted_run(bucket_run):
  local, resumed, _ = bucket_run
  assert int(resumed.step) == int(local.step) == 6
  assert_trees_equal((resumed.params, resumed.opt_state), (local.params, local.opt_state))


def test_every_file_of_the_run_is_in_the_bucket(bucket_run):
  _, _, model_dir = bucket_run
  names = set(storage.listdir(model_dir))
  assert {"checkpoints", "input_positions", "vocabulary", "model_config.json", "trained_on.json", "config.gin",
          "train_metrics.jsonl", "tensorboard"} <= names
  steps = sorted(int(d) for d in storage.listdir(storage.join(model_dir, paths.SUBDIR)) if d.isdigit())
  assert steps == [3, 4, 6]  # the first run saved its last step, 3
  positions = storage.listdir(storage.join(model_dir, paths.INPUT_POSITIONS, "process_0"))
  assert sorted(int(p) for p in positions) == [3, 4, 6]  # dropped with their checkpoints
  assert run_record.recorded_model_config(model_dir) == TINY
  assert run_record.recorded_format(model_dir)["format"]
  assert run_record.recorded_vocabulary(model_dir) is not None
  assert run_record.read_trained_on(model_dir)["step"] == 6
  lines = [json.loads(line) for line in storage.read_text(storage.join(model_dir, "train_metrics.jsonl")).splitlines()]
  assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]  # the resumed run appended to the first one's
  events = storage.listdir(storage.join(model_dir, "tensorboard", "train"))
  assert any(n.startswith("events.out.tfevents") for n in events)


def test_the_resumed_run_read_its_input_position_from_the_bucket(bucket_run, capsys):
  _, _, model_dir = bucket_run
  _train(model_dir, 8)  # resumes at 6 from the saved position: no "reading 6 batches" line
  out = capsys.readouterr().out
  assert "resumed from step 6" in out and "no saved input position" not in out


def test_eval_reads_the_run_and_writes_its_results_into_the_bucket(bucket_run):
  _, _, model_dir = bucket_run
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  reports = evaluation.evaluate(model_dir, mixture_or_task_name="embedded_eval_nli", num_examples=4,
                                task_feature_lengths={"inputs": 64, "targets": 16}, batch_size=4, mesh=mesh,
                                all_steps=True)
  steps = sorted(int(d) for d in storage.listdir(storage.join(model_dir, paths.SUBDIR)) if d.isdigit())
  assert sorted({r["step"] for r in reports}) == steps
  for step in steps:
    result = storage.join(model_dir, f"eval_embedded_eval_nli_validation_step{step}.json")
    assert storage.read_json(result)["checkpoint_path"] == model_dir
    assert storage.read_text(storage.join(model_dir, f"predictions_embedded_eval_nli_validation_step{step}.jsonl"))
  assert storage.listdir(storage.join(model_dir, "tensorboard", "eval"))
  again = evaluation.evaluate(model_dir, mixture_or_task_name="embedded_eval_nli", num_examples=4,
                              task_feature_lengths={"inputs": 64, "targets": 16}, batch_size=4, mesh=mesh,
                              all_steps=True)
  assert again == []  # every step's results are in the bucket: nothing is evaluated twice


def test_a_damaged_step_in_the_bucket_is_refused_then_set_aside(bucket_run, gcs_bucket, tmp_path):
  _, _, model_dir = bucket_run
  copy = f"{gcs_bucket}/e2e/damaged"
  storage.copy_local_to(storage.copy_to_local(model_dir, str(tmp_path / "run")), copy)
  newest = max(int(d) for d in storage.listdir(storage.join(copy, paths.SUBDIR)) if d.isdigit())
  params = storage.join(copy, paths.SUBDIR, str(newest), "params")
  for name in storage.files_under(params):
    if "/d/" in name or name.rsplit("/", 1)[-1].startswith(("manifest", "ocdbt")):
      storage.write_bytes(name, storage.read_bytes(name)[:3])  # truncated
  with pytest.raises(UserError, match=rf"checkpoint step\(s\) \[{newest}\] .* cannot be restored"):
    _train(copy, newest + 2)
  state = _train(copy, newest, on_damaged_checkpoint="set_aside")
  assert int(state.step) == newest
  assert f"{newest}.damaged" in storage.listdir(storage.join(copy, paths.SUBDIR))


@pytest.mark.parametrize("model_dir, says", [("hdfs://nn/run", "hdfs://"), ("gs://only-a-bucket", "whole bucket"),
                                             ("gs:/typo/run", "one slash")])
def test_a_model_dir_flan_jax_cannot_use_is_one_line_and_writes_nothing(model_dir, says, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError, match=says):
    _train(model_dir, 2)
  assert os.listdir(tmp_path) == []


def test_a_bucket_that_does_not_exist_is_one_line_exit_2_and_nothing_is_written(gcs_server):
  out = binary("train", *TINY_FLAGS, "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", "--gin.TRAIN_STEPS=2",
               "--gin.MODEL_DIR='gs://no-such-bucket/run'")
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: MODEL_DIR='gs://no-such-bucket/run': bucket 'no-such-bucket' does not exist (or these credentials "
      "cannot see it); create it or pass a path in another bucket"], out.stderr[-3000:]
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_a_second_trainer_on_a_bucket_dir_is_refused_naming_the_holder(gcs_dir):
  with run_lock.hold(gcs_dir):  # this process plays the running trainer
    with pytest.raises(UserError, match=f"MODEL_DIR {gcs_dir} is in use by pid {os.getpid()} on host"):
      _train(gcs_dir, 2)
  assert not storage.exists(storage.join(gcs_dir, paths.SUBDIR))
