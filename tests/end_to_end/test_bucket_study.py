"""A study whose STUDY_DIR is in a bucket (gs://, on the local GCS server of tests/storage_server.py): its runs, eval
results, done markers, manifest and report land there and nothing locally; a rerun skips the finished jobs; the
report command reads predictions from the bucket and writes its report there."""

import os
import uuid

import pytest
import seqio

from flan_jax import report, storage, studies
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from tests.studies.test_study import run_study  # the same study call, from gin files and bindings

# The smallest study the report accepts: one size, one seed, the base model and its instruction-tuned run on one
# held-out cluster, a few steps each (the lengths and batch of tests/studies/test_study.py: its compiled programs).
MICRO = """
include 'studies/miniature.gin'
study.sizes = {'tiny': ['models/tiny.gin']}
study.seeds = [0]
study.conditions = ['base', 'instructions']
study.cluster_counts = []
study.pretrain = {'MIXTURE_OR_TASK_NAME': 'embedded_pretrain', 'TASK_FEATURE_LENGTHS': %LENGTHS,
                  'TRAIN_STEPS': 2, 'BATCH_SIZE': 8, 'CHECKPOINT_PERIOD': 2}
study.tune = {'TASK_FEATURE_LENGTHS': %LENGTHS, 'TRAIN_STEPS': 2, 'BATCH_SIZE': 8, 'CHECKPOINT_PERIOD': 2}
study.evaluate = {'TASK_FEATURE_LENGTHS': %LENGTHS, 'EVAL_SPLITS': ['validation', 'test'],
                  'evaluate.num_examples': 2, 'EVAL_BATCH_SIZE': 8}
study.eval_mixture = 'bucket_study_eval_{held_out}'
"""
# One dataset of the held-out cluster, on its three templates (the report chooses one on validation).
EVAL_MIXTURE = "bucket_study_eval_sentiment"
EVAL_TASKS = [f"embedded_movie_review_scoring_t{t}" for t in range(3)]
# Each job, in the order it runs, and the folder (in STUDY_DIR) of its outputs and done marker.
JOBS = {"tiny_seed0/pretrain": "runs/tiny_seed0/pretrain",
        "tiny_seed0/embedded_no_sentiment": "runs/tiny_seed0/embedded_no_sentiment",
        "tiny_seed0/sentiment_eval": "evals/tiny_seed0/sentiment"}


@pytest.fixture(scope="module")
def eval_mixture():
  seqio.MixtureRegistry.add(EVAL_MIXTURE, EVAL_TASKS, default_rate=1.0)
  try:
    yield EVAL_MIXTURE
  finally:
    seqio.MixtureRegistry.remove(EVAL_MIXTURE)


@pytest.fixture(scope="module")
def bucket_study(gcs_bucket, eval_mixture, tmp_path_factory):
  """(the study's gin file, its STUDY_DIR in the bucket, the report, the local folder it ran in)."""
  directory = tmp_path_factory.mktemp("study")
  gin_file = directory / "micro.gin"
  gin_file.write_text(MICRO)
  cwd = directory / "cwd"
  cwd.mkdir()
  study_dir = f"{gcs_bucket}/study_{uuid.uuid4().hex[:8]}"
  here = os.getcwd()
  os.chdir(cwd)  # where a mistaken local `gs:` folder would appear
  try:
    result = run_study(str(gin_file), f"STUDY_DIR = '{study_dir}'")
  finally:
    os.chdir(here)
  return str(gin_file), study_dir, result, str(cwd)


def test_the_study_runs_and_reports_into_the_bucket(bucket_study):
  _, study_dir, result, cwd = bucket_study
  assert os.listdir(cwd) == []  # nothing local: no `gs:` folder
  assert {c["condition"] for c in result["cells"].values()} == {"base", "instructions"}
  assert set(storage.listdir(study_dir)) == {"contamination.json", "evals", "report", "runs", "study.json"}
  manifest = storage.read_json(storage.join(study_dir, "study.json"))
  assert {c["id"] for c in manifest["cells"]} == set(result["cells"])
  assert all(c["eval_dir"].startswith(f"{study_dir}/evals/") for c in manifest["cells"])
  tuned = next(c for c in manifest["cells"] if c["condition"] == "instructions")
  assert tuned["checkpoint"] == f"{study_dir}/runs/tiny_seed0/embedded_no_sentiment"
  assert tuned["trained_on"]["step"] == 2  # read from the run's record in the bucket
  for job, folder in JOBS.items():
    assert storage.read_json(storage.join(study_dir, folder, studies.DONE))["spec"]["id"] == job
  assert storage.listdir(storage.join(study_dir, "runs", "tiny_seed0", "pretrain", "checkpoints")) == ["2"]
  for cell in manifest["cells"]:  # each model's newest step, 2, on both splits
    names = set(storage.listdir(cell["eval_dir"]))
    for split in ("validation", "test"):
      assert {f"eval_{EVAL_MIXTURE}_{split}_step2.json", f"predictions_{EVAL_MIXTURE}_{split}_step2.jsonl"} <= names
  written = storage.read_json(storage.join(study_dir, "report", "report.json"))
  assert written["groups"] == result["groups"] and written["differences"] == result["differences"]
  assert storage.read_text(storage.join(study_dir, "report", "report.md")).startswith("#")
  png = storage.read_bytes(storage.join(study_dir, "report", "conditions.png"))
  assert png.startswith(b"\x89PNG") and len(png) > 1000  # the figure drawn locally, uploaded whole


def test_a_rerun_skips_the_finished_jobs_and_gives_the_same_report(bucket_study, capfd):
  gin_file, study_dir, result, _ = bucket_study
  capfd.readouterr()
  again = run_study(gin_file, f"STUDY_DIR = '{study_dir}'")
  out = capfd.readouterr().out
  skipped = [line for line in out.splitlines() if "done before, skipped" in line]
  assert [line.split(": ")[1].split(" ")[1] for line in skipped] == list(JOBS)
  assert again["groups"] == result["groups"] and again["differences"] == result["differences"]
  assert f"study: report in {study_dir}/report" in out


def test_a_study_s_tfds_data_dir_is_bound_in_every_job_and_redoes_none(bucket_study, tmp_path, capfd):
  gin_file, study_dir, _, _ = bucket_study
  capfd.readouterr()
  try:
    run_study(gin_file, f"STUDY_DIR = '{study_dir}'", f"tfds_data_dir.path = '{tmp_path}'", "study.action = 'print'")
  finally:
    data_lib.use_tfds_data_dir(None)  # TFDS's default again, for the tests that follow in this process
  lines = capfd.readouterr().out.splitlines()
  commands = [line for line in lines if line.startswith("python -m")]
  assert len(commands) == 3 and all(f"--gin.TFDS_DATA_DIR={tmp_path}" in c for c in commands)
  assert all("[done]" in line for line in lines if line.startswith("# ") and "training jobs" not in line)


def test_the_report_command_reads_and_writes_the_bucket(bucket_study, capfd):
  _, study_dir, _, _ = bucket_study
  evals = f"{study_dir}/evals/tiny_seed0/sentiment"
  out = f"{study_dir}/flan_report"
  code = report.main(["--predictions", f"base={evals}/base", f"tuned={evals}/instructions", "--baseline", "base",
                      "--bootstrap", "10", "--output_dir", out])
  assert code == 0, capfd.readouterr().err
  assert set(storage.listdir(out)) == {"report.json", "report.md", "clusters.png", "templates.png"}
  assert set(storage.read_json(f"{out}/report.json")["runs"]) == {"base", "tuned"}
  assert storage.read_bytes(f"{out}/clusters.png").startswith(b"\x89PNG")


@pytest.mark.parametrize("study_dir, says", [("gs:/typo/study", "one slash"), ("hdfs://nn/study", "hdfs://")])
def test_a_study_dir_flan_jax_cannot_use_is_one_line(study_dir, says, tmp_path_factory, monkeypatch):
  gin_file = tmp_path_factory.mktemp("gin") / "micro.gin"
  gin_file.write_text(MICRO)
  cwd = tmp_path_factory.mktemp("cwd")
  monkeypatch.chdir(cwd)
  with pytest.raises(UserError, match=f"STUDY_DIR.*{says}"):
    run_study(str(gin_file), f"STUDY_DIR = '{study_dir}'")
  assert os.listdir(cwd) == []  # refused before anything was written
