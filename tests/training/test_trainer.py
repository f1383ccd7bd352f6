"""Tests for flan_jax/training/trainer.py: packed loss, overfitting, sharded steps, microbatches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from flan_jax.data import pipeline as data_lib
from flan_jax.model import partitioning
from flan_jax.text import formats, run_text, tokenizers
from flan_jax.training import optimizers, trainer
import flan_tasks  # noqa: F401
from tests import tiny_pretrained
from tests.checks import assert_trees_close
from tests.conftest import TINY

TASK = "embedded_no_sentiment"
LENGTHS = {"inputs": 96, "targets": 24}


def batches(n, batch_size=8, pack=True):
  ds = data_lib.get_dataset(TASK, LENGTHS, "train", batch_size, pack=pack, seed=3)
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def make(mesh_shape, lr=1e-3):
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh = partitioning.make_mesh(*mesh_shape, devices=devices)
  schedule = optimizers.make_schedule(100, learning_rate=lr)
  tx = optimizers.make_optimizer(schedule)
  s = trainer.setup(TINY, mesh, partitioning.axis_rules(), tx, seq_len=sum(LENGTHS.values()))
  return s, trainer.compile_train_step(s, tx, schedule), tx, schedule


@pytest.fixture
def bpe_without_bos(tmp_path):
  """A BPE tokenizer that adds no BOS: each example's stream starts at its prompt's own first token."""
  tiny_pretrained.train_tokenizer().save(str(tmp_path / "tokenizer.json"))
  with run_text(vocabulary=tokenizers.from_directory(str(tmp_path))):
    yield


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe_without_bos"])
def test_packed_loss_equals_examples_one_by_one(tokenizer, request):
  if tokenizer != "bytes":
    request.getfixturevalue(tokenizer)
  s, _, _, _ = make((1, 1, 1))
  state = s.init(jax.random.key(0))
  loss = jax.jit(functools.partial(trainer.loss_fn, model=s.model, z_loss=0.0, dropout_rng=None))
  ds = functools.partial(seqio.get_dataset, mixture_or_task_name="embedded_parity", task_feature_lengths=LENGTHS,
                         dataset_split="train", shuffle=False, use_cached=False)
  vocab = data_lib.vocabulary("embedded_parity")
  assert (formats.decoder_start(vocab, "prompt") is None) == (tokenizer != "bytes")
  packed = next(ds(feature_converter=data_lib.feature_converter(True, vocab)).batch(2).as_numpy_iterator())
  singles = {}
  for ex in ds(feature_converter=data_lib.feature_converter(False, vocab)).take(64).as_numpy_iterator():
    singles[tuple(ex["decoder_input_tokens"][ex["decoder_target_tokens"] > 0])] = ex
  total, weight = 0.0, 0.0
  matched = 0
  for row in range(2):
    seg = packed["decoder_segment_ids"][row]
    for s_id in range(1, seg.max() + 1):
      ex = singles[tuple(packed["decoder_input_tokens"][row][seg == s_id])]
      example_loss, (w, _) = loss(state.params, {k: v[None] for k, v in ex.items()})
      total, weight, matched = total + float(example_loss), weight + float(w), matched + 1
  packed_loss, (packed_weight, _) = loss(state.params, packed)
  assert matched >= 4  # the rows really hold several examples each
  assert float(packed_weight) == weight
  np.testing.assert_allclose(float(packed_loss), total, rtol=1e-5)


def test_overfits_a_fixed_batch():
  s, step, _, _ = make((1, 1, 1), lr=1e-2)
  state = s.init(jax.random.key(0))
  batch = batches(1)[0]
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] / 4, losses


def run_steps(mesh_shape, data, num_microbatches=1):
  s, _, tx, schedule = make(mesh_shape)
  step = trainer.compile_train_step(s, tx, schedule, num_microbatches=num_microbatches)
  state = s.init(jax.random.key(0))
  losses = []
  for b in data:
    state, metrics = step(state, partitioning.to_global(b, s.batch_sharding))
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def one_device_run():
  data = batches(3)
  return data, run_steps((1, 1, 1), data)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 8, 1)])
def test_sharded_training_matches_one_device(one_device_run, mesh_shape):
  data, (ref_state, ref_losses) = one_device_run
  state, losses = run_steps(mesh_shape, data)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  np.testing.assert_allclose(state.params["layers"]["mlp"]["w_up"], ref_state.params["layers"]["mlp"]["w_up"],
                             atol=1e-5)
  # The parameters really are split: w_up is [layers, embed, mlp] with embed on fsdp, mlp on tensor.
  data_n, fsdp, tensor = mesh_shape
  w_up = state.params["layers"]["mlp"]["w_up"]
  assert w_up.addressable_shards[0].data.shape == (TINY.num_layers, TINY.d_model // fsdp, TINY.d_ff // tensor)
  mu = state.opt_state[1][0].mu["layers"]["mlp"]["w_up"]  # Adam's first moment is split the same way
  assert mu.sharding == w_up.sharding


def test_microbatches_equal_one_big_batch(one_device_run):
  data, _ = one_device_run
  big, big_losses = run_steps((1, 1, 1), data[:2])
  micro, micro_losses = run_steps((1, 1, 1), data[:2], num_microbatches=4)
  np.testing.assert_allclose(micro_losses, big_losses, rtol=1e-5)
  assert_trees_close(micro.params, big.params, rtol=0, atol=2e-6)


def step_losses(config, steps=1, tx=None, schedule=None, **step_kwargs):
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  schedule = schedule or optimizers.make_schedule(100, learning_rate=3e-3)
  tx = tx or optimizers.make_optimizer(schedule)
  s = trainer.setup(config, mesh, partitioning.axis_rules(), tx)
  step = trainer.compile_train_step(s, tx, schedule, **step_kwargs)
  state = s.init(jax.random.key(0))
  batch = batches(1)[0]
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return losses, state


def test_remat_policies_change_memory_not_numbers():
  import dataclasses
  ref, ref_state = step_losses(TINY, steps=2)
  for policy in ("full",):
    losses, state = step_losses(dataclasses.replace(TINY, remat_policy=policy), steps=2)
    np.testing.assert_allclose(losses, ref, rtol=1e-6)
    np.testing.assert_allclose(state.params["layers"]["mlp"]["w_up"], ref_state.params["layers"]["mlp"]["w_up"],
                               atol=1e-6)


def test_bf16_compute_with_f32_master_weights_trains():
  import dataclasses
  schedule = optimizers.make_schedule(100, learning_rate=1e-2)
  losses, state = step_losses(dataclasses.replace(TINY, dtype="bfloat16"), steps=15, schedule=schedule,
                              tx=optimizers.make_optimizer(schedule))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert losses[-1] < losses[0] / 2, losses


def test_adafactor_trains():
  schedule = optimizers.make_schedule(100, learning_rate=1e-2)
  losses, _ = step_losses(TINY, steps=15, schedule=schedule,
                          tx=optimizers.make_optimizer(schedule, name="adafactor"))
  assert losses[-1] < losses[0] / 2, losses


def test_schedules():
  const = optimizers.make_schedule(100, learning_rate=1.0, warmup_steps=10)
  assert float(const(0)) == 0.0 and abs(float(const(5)) - 0.5) < 1e-6 and float(const(50)) == 1.0
  linear = optimizers.make_schedule(110, learning_rate=1.0, schedule="linear", warmup_steps=10, end_fraction=0.1)
  assert abs(float(linear(60)) - 0.55) < 1e-6 and abs(float(linear(110)) - 0.1) < 1e-6
  cosine = optimizers.make_schedule(110, learning_rate=1.0, schedule="cosine", warmup_steps=10)
  assert abs(float(cosine(60)) - 0.5) < 1e-6 and abs(float(cosine(110))) < 1e-6
  rsqrt = optimizers.make_schedule(1000, learning_rate=1.0, schedule="rsqrt", warmup_steps=100)
  assert abs(float(rsqrt(100)) - 1.0) < 1e-6 and abs(float(rsqrt(400)) - np.sqrt(100 / 400)) < 1e-6
  with pytest.raises(ValueError, match="choose one of"):
    optimizers.make_schedule(10, schedule="exponential")


def test_z_loss_adds_the_squared_log_partition():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 7)) * 3
  targets = jnp.array([[1, 2, 3, 4, 5], [0, 1, 2, 3, 4]])
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  plain, w, _ = trainer.cross_entropy(logits, targets, weights)
  with_z, _, _ = trainer.cross_entropy(logits, targets, weights, z_loss=1e-2)
  log_z = jax.nn.logsumexp(logits, -1)
  np.testing.assert_allclose(float(with_z - plain), float(1e-2 * jnp.sum(log_z**2 * weights)), rtol=1e-5)
  assert float(w) == 8.0


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_cross_entropy_equals_autodiff_of_the_plain_formula(z_loss):
  """The written-out gradient equals autodiff of logsumexp - target logit (+ z-loss); accuracy counts argmax hits."""
  logits = jax.random.normal(jax.random.key(0), (3, 6, 11)) * 4
  targets = jax.random.randint(jax.random.key(1), (3, 6), 0, 11)
  weights = (jax.random.uniform(jax.random.key(2), (3, 6)) > 0.3).astype(jnp.int32)

  def reference(logits):
    log_z = jax.nn.logsumexp(logits, -1)
    target = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return jnp.sum((log_z - target + z_loss * log_z**2) * weights)

  loss = lambda logits: trainer.cross_entropy(logits, targets, weights, z_loss)[0]
  np.testing.assert_allclose(float(loss(logits)), float(reference(logits)), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(logits), jax.grad(reference)(logits), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(logits), jax.grad(reference)(logits), rtol=1e-5, atol=1e-6)
  correct = trainer.cross_entropy(logits, targets, weights)[2]
  assert float(correct) == float(jnp.sum((jnp.argmax(logits, -1) == targets) * weights))


def test_dropout_is_seeded_and_only_in_training():
  import dataclasses
  s, _, _, _ = make((1, 1, 1))
  model = trainer.Transformer(dataclasses.replace(TINY, dropout_rate=0.2))
  params = s.init(jax.random.key(0)).params
  batch = batches(1)[0]
  loss = jax.jit(lambda p, rng: trainer.loss_fn(p, batch, model=model, z_loss=0.0, dropout_rng=rng)[0])
  plain = jax.jit(lambda p: trainer.loss_fn(p, batch, model=model, z_loss=0.0, dropout_rng=None)[0])
  a, b = float(loss(params, jax.random.key(7))), float(loss(params, jax.random.key(7)))
  c = float(loss(params, jax.random.key(8)))
  assert a == b and a != c and a != float(plain(params))
  np.testing.assert_allclose(float(plain(params)), float(trainer.loss_fn(
      params, batch, model=trainer.Transformer(TINY), z_loss=0.0, dropout_rng=None)[0]), rtol=1e-6)
