"""A bucket that stops answering in the middle of a run (the local GCS server of tests/storage_server.py,
stopped while the trainer saves): one line, exit 6, the checkpoints complete before then intact, and the same
command rerun once the server is back resumes from them. The server is this test's own (it is stopped), and
only the trainer's processes talk to it."""

import os
import re
import subprocess
import sys

from tests.conftest import ROOT, xla_flags
from tests.storage_server import StorageServer, environment

TRAIN = ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin",
         "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", "--gin.BATCH_SIZE=4", "--gin.CHECKPOINT_PERIOD=2",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}",
         "--gin.train.log_every=1", "--gin.MODEL_DIR='gs://faults/run'"]
# tensorstore (orbax's array writes) says natively, on stderr, that it found no Google credentials: the local
# server needs none, a real bucket has them.
NO_CREDENTIALS = "google_auth_provider.cc"


def _train(env, steps, **kw):
  return subprocess.Popen([sys.executable, "-m", "flan_jax.train", *TRAIN, f"--gin.TRAIN_STEPS={steps}"], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_bucket_that_stops_answering_mid_save_is_one_line_exit_6_and_the_rerun_resumes(tmp_path):
  server = StorageServer(str(tmp_path))
  env = dict(os.environ, **environment(server.url), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=xla_flags(1))
  try:
    server.create_bucket("faults")
    run = _train(env, 1000)
    for line in run.stdout:
      if line.startswith("step 4/"):  # step 4's checkpoint is being written (asynchronously)
        break
    server.stop()
    out, err = run.communicate(timeout=300)
  finally:
    server.stop()
    if run.poll() is None:
      run.kill()
      run.communicate()
  lines = [line for line in err.strip().splitlines() if NO_CREDENTIALS not in line]
  assert run.returncode == 6 and len(lines) == 1, err[-3000:]
  assert lines[0].startswith("error: gs://faults/run stopped answering at step ") and \
      lines[0].endswith("the checkpoints complete there before then are intact: rerun the same command when "
                        "the bucket answers again"), lines[0]

  server = StorageServer(str(tmp_path), port=server.port)  # back, with the objects written before it stopped
  try:
    rerun = _train(env, 8)
    out, err = rerun.communicate(timeout=300)
  finally:
    server.stop()
  assert rerun.returncode == 0, err[-3000:]
  resumed = re.search(r"resumed from step (\d+) in gs://faults/run", out)
  assert resumed and int(resumed.group(1)) in (2, 4) and "step 8/8" in out, out[-3000:]
  assert [line for line in err.strip().splitlines() if NO_CREDENTIALS not in line] == [], err[-3000:]
