"""Tests for flan_jax/evaluation/batches.py: the eval's batches cut to length buckets give the numbers of batches
padded to the configured length, in a handful of compiled shapes."""

import functools

import jax
import numpy as np
import pytest
import tensorflow as tf

from flan_jax.evaluation import batches
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer
from tests.conftest import TINY

INPUTS, TARGETS = 48, 16  # the configured TASK_FEATURE_LENGTHS: rows of 64 positions
BATCH = 4


def _features(n: int, seed: int) -> dict:
  """n seqio PrefixLM rows (BOS + inputs, then targets and EOS) of varied lengths, right-padded to 64."""
  rng = np.random.default_rng(seed)
  length = INPUTS + TARGETS
  rows = {k: np.zeros((n, length), np.int32) for k in (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention")}
  for i in range(n):
    inputs = rng.integers(3, 259, size=int(rng.integers(2, INPUTS + 1)))
    targets = np.append(rng.integers(3, 259, size=int(rng.integers(1, TARGETS))), 1)
    whole = np.concatenate([inputs, targets])
    rows["decoder_target_tokens"][i, :len(whole)] = whole
    rows["decoder_input_tokens"][i, :len(whole)] = np.concatenate([[0], whole[:-1]])
    rows["decoder_loss_weights"][i, len(inputs):len(whole)] = 1
    rows["decoder_causal_attention"][i, :len(inputs) + 1] = 1
  return rows


@pytest.fixture(scope="module")
def setup():
  """A tiny random model, its parameters and a two-device mesh (each device takes half of every batch)."""
  model = Transformer(TINY)
  params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  return model, params, partitioning.make_mesh(devices=jax.devices()[:2]), partitioning.axis_rules()


def _run(setup, fn, features, **kwargs) -> tuple[dict, list]:
  """({index: output} of the runner over the enumerated rows, the lengths of the batches the function was traced
  with: one per compiled shape)."""
  model, params, mesh, rules = setup
  traced = []

  def traced_fn(params, batch):
    traced.append(batch["decoder_input_tokens"].shape[1])
    return fn(model, params, batch)

  runner = batches.BatchRunner(traced_fn, mesh, rules, BATCH, **kwargs)
  runner.params = params
  out = dict(runner(tf.data.Dataset.from_tensor_slices(features).enumerate()))
  return out, traced


def test_the_bucket_is_a_power_of_two_or_halfway_at_least_16_capped_at_the_configured_length():
  assert [decoding.bucket(n, 64) for n in (0, 1, 16, 17, 32, 33, 49, 64)] == [16, 16, 16, 24, 32, 48, 64, 64]
  assert [decoding.bucket(n, 320) for n in (100, 200, 257, 320)] == [128, 256, 320, 320]
  assert decoding.bucket(5, 8) == 8 and decoding.bucket(20, 20) == 20  # a configured length under 16 stays


def test_what_scoring_and_decoding_read_of_each_row():
  rows = {"decoder_input_tokens": np.array([[0, 5, 6, 7, 0, 0], [0, 4, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
          "decoder_target_tokens": np.array([[5, 6, 7, 1, 0, 0], [4, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
          "decoder_loss_weights": np.array([[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
          "decoder_causal_attention": np.array([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])}
  # A token 0 inside a row (BOS here) is not padding when another feature holds something there.
  assert batches.used_lengths(rows).tolist() == [4, 2, 0]
  assert batches.prompt_lengths(rows).tolist() == [2, 1, 0]


def test_bucketed_scores_match_padding_to_the_configured_length_in_a_few_shapes(setup):
  features = _features(22, seed=0)  # 6 batches, the last one short
  bucketed, shapes = _run(setup, decoding.score_targets, features, sort=True)
  padded, padded_shapes = _run(setup, decoding.score_targets, features, bucketed=False)
  assert sorted(bucketed) == sorted(padded) == list(range(22))
  np.testing.assert_allclose([bucketed[i] for i in range(22)], [padded[i] for i in range(22)], rtol=1e-5, atol=1e-5)
  # Each bucket compiled once: at most 16, 24, 32, 48 and 64 positions for six batches; unbucketed, 64 only.
  assert padded_shapes == [INPUTS + TARGETS]
  assert len(shapes) == len(set(shapes)) >= 2 and set(shapes) <= {16, 24, 32, 48, 64}
  # Sorted by length, no batch is cut longer than its longest row needs.
  lengths = np.sort(batches.used_lengths(features))
  needed = {decoding.bucket(int(lengths[min(s + BATCH, 22) - 1]), 64) for s in range(0, 22, BATCH)}
  assert set(shapes) == needed


@pytest.mark.parametrize("method", ["greedy", "sample"])
def test_bucketed_decodes_are_the_padded_ones(setup, method):
  features = _features(10, seed=1)
  decode = functools.partial(decoding.decoder(method, seed=3), max_decode_length=TARGETS, eos_id=1, vocab_size=259)
  bucketed, shapes = _run(setup, decode, features, reads=batches.prompt_lengths)
  padded, _ = _run(setup, decode, features, reads=batches.prompt_lengths, bucketed=False)
  assert sorted(bucketed) == list(range(10))
  for i in range(10):
    np.testing.assert_array_equal(bucketed[i], padded[i])
    assert bucketed[i].shape == (TARGETS,)
  # Cut at the prompts (at most 49 positions), never at the targets after them.
  prompts = batches.prompt_lengths(features)
  needed = [decoding.bucket(int(prompts[s:s + BATCH].max()), 64) for s in range(0, 10, BATCH)]
  assert shapes == list(dict.fromkeys(needed))  # in the dataset's order, each bucket compiled once


def test_run_rows_keeps_the_order_given(setup):
  model, params, mesh, rules = setup
  features = _features(9, seed=2)
  runner = batches.BatchRunner(functools.partial(decoding.score_targets, model), mesh, rules, BATCH, sort=True)
  runner.params = params
  one_by_one = [runner.run_rows({k: v[i:i + 1] for k, v in features.items()})[0] for i in range(9)]
  np.testing.assert_allclose(runner.run_rows(features), one_by_one, rtol=1e-5, atol=1e-5)
