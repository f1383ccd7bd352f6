"""Tests for flan_jax/checkpoints/store.py through the training loop: resume, fallback, mismatch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.checkpoints import store as checkpointing
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig
from flan_jax.training import trainer
import flan_tasks  # noqa: F401
from tests.checks import assert_trees_equal
from tests.conftest import TINY

ARGS = dict(mixture_or_task_name="embedded_no_topic", task_feature_lengths={"inputs": 64, "targets": 16},
            batch_size=4, model_config=TINY, checkpoint_period=2, log_every=100, async_checkpointing=False)


def run(model_dir, steps, **kw):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  return trainer.train(model_dir, train_steps=steps, mesh=mesh, **{**ARGS, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  straight_dir = str(tmp_path_factory.mktemp("straight"))
  resumed_dir = str(tmp_path_factory.mktemp("resumed"))
  straight = run(straight_dir, 6)
  run(resumed_dir, 3)
  resumed = run(resumed_dir, 6)
  return straight, resumed, straight_dir, resumed_dir


def test_stop_and_resume_equals_one_run(runs):
  straight, resumed, _, _ = runs
  assert int(resumed.step) == int(straight.step) == 6
  assert_trees_equal(resumed.params, straight.params)
  assert_trees_equal(resumed.opt_state, straight.opt_state)


def test_keeps_last_k_and_writes_operative_config(runs):
  _, _, straight_dir, _ = runs
  steps = sorted(int(d) for d in os.listdir(os.path.join(straight_dir, "checkpoints")) if d.isdigit())
  assert steps == [2, 4, 6]
  # The input position is saved with every checkpoint (and dropped with it).
  positions = os.listdir(os.path.join(straight_dir, checkpoints.INPUT_POSITIONS, "process_0"))
  assert sorted(int(p) for p in positions) == [2, 4, 6]
  assert os.path.exists(os.path.join(straight_dir, "config.gin"))


def _damaged_copy(run_dir, dest, steps):
  """A copy of a run whose checkpoints at `steps` have every params file truncated to a third."""
  import shutil
  shutil.copytree(run_dir, dest)
  for step in steps:
    for root, _, files in os.walk(os.path.join(dest, "checkpoints", str(step), checkpointing.PARAMS)):
      for name in files:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
  return os.path.join(dest, "checkpoints")


def _restore(directory, on_damaged):
  s = trainer.setup(TINY, partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.axis_rules(),
                    trainer.optimizers.make_optimizer(trainer.optimizers.make_schedule(6)))
  mngr = checkpointing.manager(directory, async_save=False)
  try:
    return checkpointing.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs, on_damaged)
  finally:
    mngr.close()


def test_a_damaged_newest_checkpoint_stops_the_run_by_default(runs, tmp_path):
  directory = _damaged_copy(runs[2], str(tmp_path / "run"), [6])
  with pytest.raises(UserError, match=r"checkpoint step\(s\) \[6\] .* cannot be restored.*resume from step 4"):
    _restore(directory, "refuse")
  assert sorted(os.listdir(directory)) == ["2", "4", "6"]  # nothing touched


def test_set_aside_renames_damaged_steps_and_resumes_from_the_newest_good_one(runs, tmp_path):
  directory = _damaged_copy(runs[2], str(tmp_path / "run"), [6])
  step, _, _ = _restore(directory, "set_aside")
  assert step == 4 and sorted(os.listdir(directory)) == ["2", "4", "6.damaged"]


def test_every_checkpoint_damaged_never_starts_from_scratch_unasked(runs, tmp_path):
  directory = _damaged_copy(runs[2], str(tmp_path / "run"), [2, 4, 6])
  with pytest.raises(UserError, match=r"\[6, 4, 2\] .*start again from step 0"):
    _restore(directory, "refuse")
  assert _restore(directory, "set_aside") is None
  assert sorted(os.listdir(directory)) == ["2.damaged", "4.damaged", "6.damaged"]
  with pytest.raises(UserError, match="on_damaged_checkpoint='skip' is not one of"):
    _restore(directory, "skip")


def test_restore_params_for_a_different_model_names_the_mismatch(runs):
  _, _, straight_dir, _ = runs
  from flan_jax.model.transformer import Transformer
  bigger = ModelConfig(**{**TINY.__dict__, "d_ff": 256})
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  target = partitioning.sharded_param_structs(Transformer(bigger), mesh, partitioning.axis_rules())
  with pytest.raises(UserError, match=r"does not match the model config: wrong shape.*w_down"):
    checkpointing.restore_params(straight_dir, target)
  step, params = checkpointing.restore_params(os.path.join(straight_dir, "checkpoints", "4"),
                                              partitioning.sharded_param_structs(Transformer(TINY), mesh,
                                                                                 partitioning.axis_rules()))
  assert step == 4 and params["lm_head"].shape == (TINY.d_model, TINY.vocab_size)


def test_no_checkpoint_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="no checkpoint found"):
    checkpointing.restore_params(str(tmp_path), {})


# Two ways to diverge. The loss: step 1 changes nothing, step 2 moves the weights by ~1e30 (finite), and step 3's
# loss is not finite. The update: step 1 changes nothing, and step 2's weight decay of 1000 at a learning rate of
# 1e38 overflows the weights while step 2's loss and gradients (computed before the update) are finite: only the
# check of the state about to be saved sees it.
DIVERGENCES = {"loss": (1e30, 0.0, 3, "loss or gradient became nan / nan"),
               "update": (1e38, 1000.0, 2, "the parameters or optimizer state became NaN or Inf")}


@pytest.mark.parametrize("how", list(DIVERGENCES))
def test_diverging_loss_stops_with_the_step_and_keeps_good_checkpoints(tmp_path, how):
  from flan_jax.training import optimizers
  model_dir = str(tmp_path / "nan")
  learning_rate, weight_decay, failed, message = DIVERGENCES[how]
  schedule = lambda count: jnp.where(count < 1, 0.0, learning_rate)
  tx = optimizers.make_optimizer(schedule, clip_norm=None, weight_decay=weight_decay)
  with pytest.raises(FloatingPointError, match=rf"{message} at step {failed}\b"):
    run(model_dir, 8, optimizer=tx, learning_rate_schedule=schedule, checkpoint_period=1)
  s = trainer.setup(TINY, partitioning.make_mesh(devices=jax.devices()[:1]), partitioning.axis_rules(), tx)
  mngr = checkpointing.manager(os.path.join(model_dir, "checkpoints"), async_save=False)
  step, params, opt_state = checkpointing.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs)
  leaves = jax.tree.leaves((params, opt_state))
  assert step == failed - 1 and leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_keep_last_k_and_every_mth(tmp_path):
  run(str(tmp_path), 8, checkpoint_period=1, checkpoints_to_keep=2, keep_period=4)
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [4, 7, 8]


def test_initial_checkpoint_restores_parameters_only(runs, tmp_path):
  straight, _, straight_dir, _ = runs
  from flan_jax.training import optimizers
  frozen = optimizers.make_optimizer(lambda step: 0.0)
  state = run(str(tmp_path / "ft"), 1, initial_checkpoint_path=straight_dir, optimizer=frozen,
              learning_rate_schedule=lambda step: 0.0)
  assert int(state.step) == 1  # a new run: its own step count and a fresh optimizer state
  assert_trees_equal(state.params, straight.params)
  bigger = ModelConfig(**{**TINY.__dict__, "num_layers": 3})
  with pytest.raises(UserError, match="wrong shape"):
    run(str(tmp_path / "ft2"), 1, initial_checkpoint_path=straight_dir, model_config=bigger)
