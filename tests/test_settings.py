"""Numeric settings of the train and eval binaries: a wrong value or type is one line naming the setting and
what it allows (exit 2), found before anything compiles."""

import jax
import optax
import pytest

from flan_jax import checkpoints, settings
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator as evaluation
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import ModelConfig
from flan_jax.training import optimizers, trainer
import flan_tasks  # noqa: F401  (registers the embedded tasks)
from tests.checks import one_line, run_main
from tests.conftest import TINY
from tests.end_to_end.test_binaries import TINY as TINY_GIN
from tests.end_to_end.test_binaries import binary

LENGTHS = {"inputs": 32, "targets": 8}


def _train(**overrides):
  kwargs = dict(mixture_or_task_name="embedded_no_nli", task_feature_lengths=LENGTHS, train_steps=2, batch_size=8,
                model_config=TINY, mesh=partitioning.make_mesh(devices=jax.devices()[:1]),
                learning_rate_schedule=optax.constant_schedule(1e-3), optimizer=optax.sgd(1e-3))
  kwargs.update(overrides)
  return trainer.train("/nonexistent/flan_jax_settings_run", **kwargs)  # refused before MODEL_DIR is made


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "BATCH_SIZE=0 must be a positive integer; pass --gin.BATCH_SIZE=<n>"),
    ({"batch_size": -8}, "BATCH_SIZE=-8 must be a positive integer"),
    ({"batch_size": "8"}, r"BATCH_SIZE='8' \(a str\) must be a positive integer"),
    ({"batch_size": 8.5}, r"BATCH_SIZE=8.5 \(a float\) must be a positive integer"),
    ({"batch_size": True}, r"BATCH_SIZE=True \(a bool\) must be a positive integer"),
    ({"task_feature_lengths": {"inputs": -5, "targets": 8}},
     r"TASK_FEATURE_LENGTHS\['inputs'\]=-5 must be a positive integer; pass --gin.TASK_FEATURE_LENGTHS="),
    ({"task_feature_lengths": {"inputs": 32, "targets": "8"}}, r"TASK_FEATURE_LENGTHS\['targets'\]='8'"),
    ({"train_steps": 0}, "TRAIN_STEPS=0 must be a positive integer; pass --gin.TRAIN_STEPS=<n>"),
    ({"checkpoint_period": 0}, "CHECKPOINT_PERIOD=0 must be a positive integer"),
    ({"checkpoints_to_keep": 0}, "CHECKPOINTS_TO_KEEP=0 must be a positive integer or None"),
    ({"keep_period": -1}, "KEEP_PERIOD=-1 must be a positive integer or None"),
    ({"num_microbatches": 0}, "train.num_microbatches=0 must be a positive integer; pass --gin.train.num_microbatches"),
    ({"num_microbatches": 2.0}, r"train.num_microbatches=2.0 \(a float\)"),
    ({"log_every": 0}, "train.log_every=0 must be a positive integer"),
    ({"z_loss": -1e-4}, "train.z_loss=-0.0001 must be a number >= 0"),
    ({"async_checkpointing": "no"}, "train.async_checkpointing='no' .* must be True or False"),
])
def test_bad_trainer_settings_are_refused(overrides, message):
  with pytest.raises(UserError, match=message):
    _train(**overrides)


@pytest.mark.parametrize("kwargs, message", [
    ({"learning_rate": -1.0}, "LEARNING_RATE=-1.0 must be a positive number; pass --gin.LEARNING_RATE=<x>"),
    ({"learning_rate": 0}, "LEARNING_RATE=0 must be a positive number"),
    ({"learning_rate": "1e-3"}, r"LEARNING_RATE='1e-3' \(a str\)"),
    ({"learning_rate": float("nan")}, "LEARNING_RATE=nan must be a positive number"),
    ({"total_steps": "8"}, r"TRAIN_STEPS='8' \(a str\) must be a positive integer"),
    ({"warmup_steps": -1}, "make_schedule.warmup_steps=-1 must be a non-negative integer"),
    ({"end_fraction": 2.0}, r"make_schedule.end_fraction=2.0 must be a number in \[0, 1\]"),
])
def test_bad_schedule_settings_are_refused(kwargs, message):
  with pytest.raises(UserError, match=message):
    optimizers.make_schedule(**{"total_steps": 10, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"b1": 1.0}, r"make_optimizer.b1=1.0 must be a number in \[0, 1\)"),
    ({"eps": 0.0}, "make_optimizer.eps=0.0 must be a positive number"),
    ({"weight_decay": -0.1}, "make_optimizer.weight_decay=-0.1 must be a number >= 0"),
    ({"clip_norm": "1"}, r"make_optimizer.clip_norm='1' \(a str\) must be a number >= 0 or None"),
])
def test_bad_optimizer_settings_are_refused(kwargs, message):
  with pytest.raises(UserError, match=message):
    optimizers.make_optimizer(optax.constant_schedule(1e-3), **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"fsdp": 0}, "make_mesh.fsdp=0 must be a positive integer; pass --gin.make_mesh.fsdp=<n>"),
    ({"fsdp": -1}, "make_mesh.fsdp=-1 must be a positive integer"),
    ({"tensor": "2"}, r"make_mesh.tensor='2' \(a str\)"),
    ({"data": 0}, "make_mesh.data=0 must be a positive integer or -1"),
    ({"fsdp": 3}, "8 devices do not divide into fsdp=3 .* choose make_mesh sizes whose product divides 8"),
    ({"data": 16}, "needs 16 devices; there are 8: choose sizes whose product is that, or make_mesh.data=-1"),
])
def test_mesh_sizes_that_do_not_fit_the_devices_are_refused(kwargs, message):
  assert len(jax.devices()) == 8  # tests/conftest.py
  with pytest.raises(UserError, match=message):
    partitioning.make_mesh(**kwargs)


@pytest.mark.parametrize("field, value, message", [
    ("attention_block_size", 1.5, r"ModelConfig.attention_block_size=1.5 \(a float\) must be positive"),
    ("attention_block_size", "64", r"ModelConfig.attention_block_size='64' \(a str\) must be positive"),
    ("attention_block_size", True, r"ModelConfig.attention_block_size=True \(a bool\) must be positive"),
    ("attention_block_size", -4, "ModelConfig.attention_block_size=-4 must be positive"),
    ("num_kv_heads", 0, "ModelConfig.num_kv_heads=0 must be a positive integer"),
    ("d_model", 64.0, r"ModelConfig.d_model=64.0 \(a float\)"),
    ("sliding_window", 0, "ModelConfig.sliding_window=0 must be a positive integer or None"),
    ("dropout_rate", 1.5, r"ModelConfig.dropout_rate=1.5 must be a number in \[0, 1\)"),
    ("norm_eps", 0, "ModelConfig.norm_eps=0 must be a positive number"),
    ("scan_layers", 1, r"ModelConfig.scan_layers=1 \(an int\) must be True or False"),
    ("dtype", "float33", r"ModelConfig.dtype='float33'; choose one of \['float32', 'bfloat16', 'float16'\]"),
])
def test_bad_model_config_fields_are_refused(field, value, message):
  with pytest.raises(UserError, match=message):
    ModelConfig(**{field: value})


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "EVAL_BATCH_SIZE=0 must be a positive integer; pass --gin.EVAL_BATCH_SIZE=<n>"),
    ({"batch_size": "8"}, r"EVAL_BATCH_SIZE='8' \(a str\)"),
    ({"task_feature_lengths": {"inputs": 0, "targets": 8}}, r"TASK_FEATURE_LENGTHS\['inputs'\]=0"),
    ({"task_feature_lengths": [32, 8]}, "TASK_FEATURE_LENGTHS=.* is not a dict of 'inputs' and 'targets'"),
    ({"num_examples": -1}, "evaluate.num_examples=-1 must be a positive integer or None"),
    ({"follow_seconds": -1}, "evaluate.follow_seconds=-1 must be a number >= 0"),
    ({"all_steps": "yes"}, "evaluate.all_steps='yes' .* must be True or False"),
    ({"split": []}, "EVAL_SPLITS=.* must be a split name or a non-empty list of them"),
])
def test_bad_eval_settings_are_refused(kwargs, message):
  with pytest.raises(UserError, match=message):
    evaluation.evaluate("/nonexistent/run", **{"mixture_or_task_name": "embedded_eval_nli",
                                               "task_feature_lengths": LENGTHS, **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"num_beams": 0}, "decoder.num_beams=0 must be a positive integer"),
    ({"temperature": 0}, "decoder.temperature=0 must be a positive number"),
    ({"top_p": 1.5}, r"decoder.top_p=1.5 must be a number in \(0, 1\]"),
    ({"top_k": -1}, "decoder.top_k=-1 must be a non-negative integer"),
])
def test_bad_decoder_settings_are_refused(kwargs, message):
  with pytest.raises(UserError, match=message):
    decoding.decoder("beam", **kwargs)


def test_bad_export_shard_size_is_refused():
  with pytest.raises(UserError, match="export_checkpoint.max_shard_gb=0 must be a positive number"):
    checkpoints.export_checkpoint("/nonexistent/run", "/nonexistent/out", max_shard_gb=0)


def test_good_values_pass_through():
  assert settings.integer("X", 3) == 3 and settings.integer("X", None, allow_none=True) is None
  assert settings.integer("X", -1, allow=(-1,)) == -1
  assert settings.number("X", 1, low=0, low_open=True) == 1.0
  assert settings.feature_lengths("X", {"inputs": 4, "targets": 2}) == {"inputs": 4, "targets": 2}


TRAIN_GIN = [*TINY_GIN, "--gin.MODEL_DIR=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_all"]
EVAL_GIN = ["--gin_file=runs/eval.gin", "--gin.CHECKPOINT_PATH=/tmp/x", "--gin.MIXTURE_OR_TASK_NAME=embedded_eval_nli"]


@pytest.mark.parametrize("binary_name, args, message", [
    ("train", [*TRAIN_GIN, "--gin.TASK_FEATURE_LENGTHS={'inputs': -5, 'targets': 16}"],
     "TASK_FEATURE_LENGTHS['inputs']=-5 must be a positive integer"),
    ("train", [*TRAIN_GIN, "--gin.LEARNING_RATE=-1"], "LEARNING_RATE=-1 must be a positive number"),
    ("train", [*TRAIN_GIN, "--gin.make_mesh.data=3"],
     "mesh data=3 x fsdp=1 x tensor=1 x dcn_data=1 needs 3 devices; there are 8"),
    ("eval", [*EVAL_GIN, "--gin.EVAL_BATCH_SIZE='8'"], "EVAL_BATCH_SIZE='8' (a str) must be a positive integer"),
])
def test_bad_settings_through_gin_are_one_line(binary_name, args, message, capfd):
  import importlib
  code, err = run_main(importlib.import_module(f"flan_jax.{binary_name}"), args, capfd)
  line = one_line(err)
  assert code == 2 and message in line, err


def test_the_train_binary_exits_2_with_one_line_for_batch_size_0():
  out = binary("train", *TINY_GIN, "--gin.MODEL_DIR=/tmp/flan_jax_unused", "--gin.MIXTURE_OR_TASK_NAME=embedded_no_nli",
               "--gin.BATCH_SIZE=0", timeout=120)
  assert out.returncode == 2 and out.stderr.strip() == (
      "error: BATCH_SIZE=0 must be a positive integer; pass --gin.BATCH_SIZE=<n>"), out.stderr[-2000:]
