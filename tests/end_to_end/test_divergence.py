"""`python -m flan_jax.train` run into a divergence: exit 3, one line naming the step, and the run's last checkpoint
is a step before it with every parameter and optimizer-state value finite.

A learning rate of 1e30 (no clipping) moves the parameters to ~1e30 at step 1, and step 2's loss is NaN. (An
update that overflows while its loss and gradients are finite, which only the check of the state about to be
saved sees, is tested in the trainer's own process: tests/checkpoints/test_checkpointing.py.)
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from flan_jax.checkpoints import store
from flan_jax.model import partitioning
from flan_jax.training import optimizers, trainer
from tests import conftest
from tests.checks import one_line
from tests.conftest import TINY, xla_flags

ROOT = conftest.ROOT
LENGTHS = {"inputs": 32, "targets": 8}
DIVERGENCES = {"loss": ["--gin.LEARNING_RATE=1e30"]}
DIVERGED_AT = 2


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
  """{name: (model_dir, returncode, stdout, stderr)}, the runs started at once."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  procs = {}
  for name, extra in DIVERGENCES.items():
    model_dir = str(tmp_path_factory.mktemp(f"diverged_{name}"))
    args = ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin", f"--gin.MODEL_DIR={model_dir}",
            "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1", "--gin.TRAIN_STEPS=6", "--gin.BATCH_SIZE=4",
            "--gin.CHECKPOINT_PERIOD=1", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.train.log_every=1",
            "--gin.make_optimizer.clip_norm=None", *extra]
    procs[name] = model_dir, subprocess.Popen([sys.executable, "-m", "flan_jax.train", *args], cwd=ROOT, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  runs = {}
  try:
    for name, (model_dir, proc) in procs.items():
      out, err = proc.communicate(timeout=300)
      runs[name] = model_dir, proc.returncode, out, err
  finally:
    for _, proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  return runs


def restore_last(model_dir):
  """(step, params, opt_state) of the run's newest checkpoint, restored into the structure the binary trains
  (adamw after a schedule, no clipping): a missing or extra leaf fails the restore."""
  tx = optimizers.make_optimizer(optimizers.make_schedule(6), clip_norm=None)
  s = trainer.setup(TINY, partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.axis_rules(), tx,
                    sum(LENGTHS.values()))
  mngr = store.manager(os.path.join(model_dir, "checkpoints"), async_save=False, create=False)
  try:
    restored = store.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs)
  finally:
    mngr.close()
  assert restored is not None, f"no checkpoint in {model_dir}"
  step, params, opt_state = restored
  assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(s.sharded_param_structs)) > 0
  assert len(jax.tree.leaves(opt_state)) == len(jax.tree.leaves(s.sharded_opt_state_structs)) > 0
  return step, params, opt_state


def non_finite(tree) -> list[str]:
  return [jax.tree_util.keystr(path) for path, x in jax.tree.leaves_with_path(tree)
          if not np.isfinite(np.asarray(x)).all()]


@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_a_diverged_run_exits_3_naming_the_step_and_keeps_only_finite_checkpoints(diverged, name):
  model_dir, code, out, err = diverged[name]
  assert code == 3, (code, out[-2000:], err[-3000:])
  line = one_line(err)
  assert line.startswith("error: ") and re.search(rf"\bat step {DIVERGED_AT}\b", line), line
  assert "step 1/6" in out, out[-2000:]  # step 1 trained (and was saved) before the divergence

  steps = sorted(int(d) for d in os.listdir(os.path.join(model_dir, "checkpoints")) if d.isdigit())
  assert steps and steps[-1] < DIVERGED_AT, steps
  step, params, opt_state = restore_last(model_dir)
  assert step == steps[-1] == 1
  assert non_finite(params) == [] and non_finite(opt_state) == [], (non_finite(params), non_finite(opt_state))
