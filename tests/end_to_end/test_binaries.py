"""End-to-end tests of `python -m flan_jax.train` and `python -m flan_jax.eval` through gin."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests import conftest
from tests.checks import assert_trees_equal, one_line, run_main
from tests.conftest import xla_flags

ROOT = conftest.ROOT
TINY = ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny.gin"]
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}"


def binary(name, *args, timeout=300, env=None):
  env = dict(env or os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  return subprocess.run([sys.executable, "-m", f"flan_jax.{name}", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run of the train binary, left to its default compilation cache (under XDG_CACHE_HOME, here a
  fresh directory), so that one run also shows the binaries keep a persistent cache."""
  model_dir = str(tmp_path_factory.mktemp("run"))
  cache_home = str(tmp_path_factory.mktemp("xdg_cache"))
  env = dict(os.environ, XDG_CACHE_HOME=cache_home, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the tests' own cache would win
  out = binary("train", *TINY, f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1",
               "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4", "--gin.CHECKPOINT_PERIOD=2", LENGTHS, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return model_dir, out, cache_home


def test_train_binary_saves_checkpoints_and_config(trained):
  model_dir, out, _ = trained
  assert "step 4/4" in out.stdout
  assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == ["2", "4"]
  config = open(os.path.join(model_dir, "config.gin")).read()
  assert "TRAIN_STEPS = 4" in config and "ModelConfig.d_model = 64" in config
  metrics = [json.loads(line) for line in open(os.path.join(model_dir, "train_metrics.jsonl"))]
  assert metrics[-1]["step"] == 4 and metrics[-1]["loss"] > 0


def test_operative_config_shows_mesh_rules_schedule_and_optimizer(trained):
  model_dir, _, _ = trained
  config = open(os.path.join(model_dir, "config.gin")).read()
  for binding in ("train.mesh = @make_mesh()", "train.rules = @axis_rules()",
                  "train.learning_rate_schedule = @make_schedule()", "train.optimizer = @make_optimizer()",
                  "make_optimizer.schedule = @make_schedule()", "make_schedule.total_steps = %TRAIN_STEPS",
                  "make_schedule.learning_rate = %LEARNING_RATE", "make_optimizer.name = 'adamw'",
                  "make_mesh.data = -1", "axis_rules.rules = "):
    assert binding in config, (binding, config)


def test_eval_binary_writes_real_metrics(trained):
  model_dir, _, _ = trained
  out = binary("eval", "--gin_file=runs/eval.gin", "--gin_file=models/tiny.gin",
               f"--gin.CHECKPOINT_PATH={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_eval_nli",
               LENGTHS, "--gin.evaluate.num_examples=8", "--gin.EVAL_BATCH_SIZE=8")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(os.path.join(model_dir, "eval_embedded_eval_nli_validation_step4.json")))
  assert report["step"] == 4
  # Every template of every NLI dataset, decoded and rank-classified.
  assert set(report["metrics"]) == {f"embedded_{d}_nli_{kind}_t{i}" for d in ("color", "place", "count")
                                    for kind in ("eval", "scoring") for i in range(4)}
  for task, values in report["metrics"].items():
    assert 0.0 <= values["accuracy"] <= 100.0, (task, values)
  assert "average" in out.stdout and "embedded_color_nli_scoring_t0" in out.stdout
  # One record per example, with its lineage, for the report.
  lines = open(os.path.join(model_dir, "predictions_embedded_eval_nli_validation_step4.jsonl")).readlines()
  records = [json.loads(line) for line in lines]
  generative = [r for r in records if r["kind"] == "generative"]
  assert len(generative) == 3 * 4 * 8  # seqio's num_examples counts rows: one per option for scoring
  scoring = [r for r in records if r["kind"] == "scoring"]
  assert scoring and {r["cluster"] for r in records} == {"nli"} and {r["template"] for r in records} == {0, 1, 2, 3}
  assert all(r["target"] in r["options"] and set(r["scores"]) == {"none", "per_token", "per_char", "calibrated"}
             for r in scoring)
  per_task = {}
  for r in scoring:
    per_task.setdefault(r["task"], []).append(r["correct"])
  for task, flags in per_task.items():  # the table's accuracy is the records' accuracy
    assert report["metrics"][task]["accuracy"] == pytest.approx(100 * sum(flags) / len(flags))


def test_unknown_task_is_one_clear_line_from_the_binary():
  out = binary("train", *TINY, "--gin.MIXTURE_OR_TASK_NAME=no_such_task", "--gin.MODEL_DIR=/tmp/flan_jax_unused",
               timeout=120)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()  # nothing else: TensorFlow's start-up lines are muted too
  assert len(lines) == 1 and "unknown task or mixture 'no_such_task'" in lines[0], out.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.MODEL_DIR=/tmp/x", "--gin.train.no_such_arg=1"],
     "gin: Configurable 'train' doesn't have a parameter named 'no_such_arg'"),
    (["--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.no_such_configurable.x=1"],
     "gin: No configurable matching 'no_such_configurable'"),
    (["--gin.MIXTURE_OR_TASK_NAME=embedded_all"], "MODEL_DIR is not set"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embeded_all"], "did you mean embedded_all"),
    (["--gin_file=no_such.gin"], "gin file no_such.gin not found"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.ModelConfig.num_heads=3"],
     "ModelConfig.num_heads=3 is not a multiple of ModelConfig.num_kv_heads=2"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.make_optimizer.name=adamz"],
     "make_optimizer.name='adamz' is not an optimizer"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.make_schedule.schedule=cosinus"],
     "make_schedule.schedule='cosinus' is not a schedule"),
    (["--no_such_flag"], "unknown flag --no_such_flag"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.BATCH_SIZE=4"],
     "BATCH_SIZE=4 must divide by the data-parallel size 8"),
    (["--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all", "--gin.TASK_FEATURE_LENGTHS={inputs: 96}"],
     "TASK_FEATURE_LENGTHS='{inputs: 96}' is not a dict of 'inputs' and 'targets' lengths"),
])
def test_train_bad_input_is_one_clear_line(args, message, capfd):
  from flan_jax import train
  code, err = run_main(train, [*TINY, *args], capfd)
  line = one_line(err)
  assert code == 2 and message in line, err


def test_eval_without_checkpoint_is_one_clear_line(tmp_path, capfd):
  from flan_jax import eval as eval_binary
  code, err = run_main(eval_binary, ["--gin_file=runs/eval.gin", "--gin_file=models/tiny.gin",
                                     f"--gin.CHECKPOINT_PATH={tmp_path}",
                                     "--gin.MIXTURE_OR_TASK_NAME=embedded_eval_nli"], capfd)
  line = one_line(err)
  assert code == 2 and "no checkpoint found" in line, err


def _final_params(model_dir):
  import jax

  from flan_jax.checkpoints import store as checkpointing
  from flan_jax.model import partitioning
  from flan_jax.model.transformer import Transformer
  from tests.conftest import TINY
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  target = partitioning.sharded_param_structs(Transformer(TINY), mesh, partitioning.axis_rules())
  return checkpointing.restore_params(model_dir, target)


def final_state(model_dir):
  """(step, params, optimizer state) of a tiny one-device run's newest checkpoint (the default optimizer's)."""
  import jax

  from flan_jax.checkpoints import paths
  from flan_jax.checkpoints import store as checkpointing
  from flan_jax.model import partitioning
  from flan_jax.training import optimizers
  from flan_jax.training import step as step_lib
  from tests.conftest import TINY
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  s = step_lib.setup(TINY, mesh, partitioning.axis_rules(), optimizers.make_optimizer(optimizers.make_schedule(1)))
  with checkpointing.closing(checkpointing.manager(os.path.join(model_dir, paths.SUBDIR), create=False)) as mngr:
    return checkpointing.restore_latest(mngr, s.sharded_param_structs, s.sharded_opt_state_structs)


def test_kill_9_at_a_random_step_then_rerun_is_bit_exact(tmp_path):
  import random


  def args(model_dir):
    return [*TINY, f"--gin.MODEL_DIR={model_dir}", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli_clusters1",
            "--gin.TRAIN_STEPS=8", "--gin.BATCH_SIZE=4", "--gin.CHECKPOINT_PERIOD=2", LENGTHS,
            "--gin.train.log_every=1"]

  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=xla_flags())
  # The uninterrupted run goes on beside the one to kill (independent processes and directories), so
  # their start-ups overlap.
  straight_err = open(tmp_path / "straight.err", "w+")
  straight = subprocess.Popen([sys.executable, "-m", "flan_jax.train", *args(tmp_path / "straight")], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=straight_err, text=True)

  kill_at = random.Random().randint(5, 7)  # by step 5 the save of step 2 has completed
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags())
  proc = subprocess.Popen([sys.executable, "-m", "flan_jax.train", *args(tmp_path / "killed")], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    if line.startswith(f"step {kill_at}/"):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, f"killed at step {kill_at}"
  with straight_err:
    assert straight.wait(timeout=300) == 0, (straight_err.seek(0), straight_err.read()[-2000:])
  again = binary("train", *args(tmp_path / "killed"))
  assert again.returncode == 0, again.stderr[-2000:]
  assert "resumed from step" in again.stdout, (kill_at, again.stdout[:500])

  step_a, a = _final_params(str(tmp_path / "straight"))
  step_b, b = _final_params(str(tmp_path / "killed"))
  assert step_a == step_b == 8
  assert_trees_equal(a, b)  # killed at step kill_at


@pytest.mark.parametrize("value, binding", [
    ("2024_runs/r1", "'2024_runs/r1'"), ("/tmp/x", "'/tmp/x'"), ("embedded_all", "'embedded_all'"),
    ("1e-3", "1e-3"), ("-2", "-2"), ("True", "True"), ("None", "None"), ("'float32'", "'float32'"),
    ("{'inputs': 96}", "{'inputs': 96}"), ("@ModelConfig()", "@ModelConfig()"), ("%MODEL_DIR", "%MODEL_DIR"),
    ("[@a(), @b()]", "[@a(), @b()]"), ("3rd_try", "'3rd_try'"),
])
def test_gin_values_that_are_not_literals_are_strings(value, binding):
  from flan_jax import cli
  flags = cli.parse_flags(["--gin_file=runs/finetune.gin", f"--gin.X={value}"])
  assert flags.gin_bindings == [f"X = {binding}"]


def test_the_binaries_keep_a_persistent_compilation_cache(trained):
  _, _, cache_home = trained  # the train binary ran with no JAX_COMPILATION_CACHE_DIR set
  assert os.listdir(os.path.join(cache_home, "flan_jax", "jax")), "nothing was cached"
