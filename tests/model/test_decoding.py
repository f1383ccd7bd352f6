"""Tests for flan_jax/model/decoding.py: cached vs recomputed decoding (1, 8 devices), sampling, beams, scores."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer
from tests.conftest import TINY

init = jax.jit(Transformer(TINY).init)  # compiled once for the whole module


def setup():
  model = Transformer(TINY)
  params = init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  # Two prompts of different lengths in a 12-token buffer: BOS(0) + inputs, then the target slots.
  tokens = jnp.array([[0, 5, 6, 7, 1, 40, 41, 1, 0, 0, 0, 0],
                      [0, 9, 1, 30, 31, 32, 1, 0, 0, 0, 0, 0]])
  prefix = jnp.array([[1] * 5 + [0] * 7, [1] * 3 + [0] * 9])
  return model, params, {"decoder_input_tokens": tokens, "decoder_causal_attention": prefix}


def test_greedy_decode_matches_a_step_by_step_reference():
  model, params, batch = setup()
  out = jax.jit(functools.partial(decoding.greedy_decode, model, max_decode_length=3, eos_id=1,
                                  vocab_size=300))(params, batch)
  # Causal after the prompt, so zeros after the sequence leave its logits alone: one compile.
  apply = jax.jit(lambda x, n: model.apply({"params": params}, x, prefix_mask=(jnp.arange(8) < n)[None]))
  for row, n in enumerate([5, 3]):
    seq = list(np.asarray(batch["decoder_input_tokens"][row, :n]))
    expected = []
    for _ in range(3):
      logits = apply(jnp.array([seq + [0] * (8 - len(seq))]), n)
      token = int(jnp.argmax(logits[0, len(seq) - 1, :300]))
      expected.append(token)
      seq.append(token)
      if token == 1:
        break
    got = [int(t) for t in out[row][: len(expected)]]
    assert got == expected
    assert all(int(t) == 0 for t in out[row][len(expected):])


def test_score_is_the_sum_of_target_log_probs():
  model, params, batch = setup()
  targets = jnp.roll(batch["decoder_input_tokens"], -1, axis=1)
  weights = jnp.array([[0] * 4 + [1] * 3 + [0] * 5, [0] * 2 + [1] * 5 + [0] * 5])
  batch = dict(batch, decoder_target_tokens=targets, decoder_loss_weights=weights)
  scores = decoding.score_targets(model, params, batch)
  logp = jax.nn.log_softmax(model.apply({"params": params}, batch["decoder_input_tokens"],
                                        prefix_mask=batch["decoder_causal_attention"]))
  for row in range(2):
    ref = sum(float(logp[row, t, targets[row, t]]) for t in range(12) if weights[row, t])
    np.testing.assert_allclose(float(scores[row]), ref, rtol=1e-5)


# KV-cache decoding: eight prompts of different lengths in a buffer that also fits the generation,
# on a random model whose weights are scaled up so that attention (and so masking) shapes its choices.
T = 12
LENGTHS = [3, 12, 5, 9, 1, 7, 11, 4]
EOS = 15
VOCAB = 300  # decode from the first 300 of the model's 384 ids
KW = dict(max_decode_length=T, eos_id=EOS, vocab_size=VOCAB)
CONFIGS = {"prefix_lm": TINY, "causal": dataclasses.replace(TINY, prefix_lm=False),
           "causal_window": dataclasses.replace(TINY, prefix_lm=False, sliding_window=6)}


def jitted(fn, config=TINY, **kwargs):
  return jax.jit(functools.partial(fn, Transformer(config), **KW, **kwargs))


@pytest.fixture(scope="module")
def mixed():
  """(params scaled up, batch, reference greedy tokens of the prefix-LM model)."""
  _, params, _ = setup()
  small = lambda path: "embedding" not in str(path) and "scale" not in str(path)
  params = jax.tree_util.tree_map_with_path(lambda path, x: x * 10 if small(path) else x, params)
  length = max(LENGTHS) + T
  prefix = (np.arange(length)[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  tokens = np.random.default_rng(0).integers(2, VOCAB, prefix.shape) * prefix
  batch = {"decoder_input_tokens": jnp.asarray(tokens, jnp.int32),
           "decoder_causal_attention": jnp.asarray(prefix)}
  ref = np.asarray(jitted(decoding.greedy_decode_reference)(params, batch))
  ended = (ref == EOS).any(axis=1)
  assert ended.any() and not ended.all() and len({tuple(r) for r in ref}) == len(ref)  # a varied test
  return params, batch, ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_greedy_equals_the_recomputing_reference(mixed, name):
  params, batch, ref = mixed
  if name != "prefix_lm":
    ref = np.asarray(jitted(decoding.greedy_decode_reference, CONFIGS[name])(params, batch))
  got = np.asarray(jitted(decoding.greedy_decode, CONFIGS[name])(params, batch))
  np.testing.assert_array_equal(got, ref)


def test_sharded_cached_greedy_equals_one_device(mixed):
  params, batch, ref = mixed
  model = Transformer(TINY)
  mesh, rules = partitioning.make_mesh(data=2, fsdp=2, tensor=2), partitioning.axis_rules()
  _, param_shardings = partitioning.param_shapes_and_shardings(partitioning.param_init_fn(model), mesh, rules)
  params = jax.device_put(params, param_shardings)
  batch = jax.device_put(batch, partitioning.batch_sharding(mesh, rules))
  greedy = jax.jit(functools.partial(decoding.greedy_decode, model, **KW),
                   out_shardings=partitioning.replicated(mesh))
  with partitioning.activate(mesh, rules):
    got = greedy(params, batch)
    # The cache is sharded like activations: batch over data x fsdp, kv heads over tensor.
    _, cache = jax.jit(functools.partial(decoding.prefill, model, slots=32))(params, batch)
  want = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), "tensor"))
  assert cache.key.sharding.is_equivalent_to(want, cache.key.ndim)  # [layers, b, k, slots, h]
  assert cache.key.sharding.shard_shape(cache.key.shape) == (TINY.num_layers, 2, 1, 32, TINY.head_dim)
  np.testing.assert_array_equal(np.asarray(got), ref)


def test_sampling_at_temperature_zero_or_top_k_one_is_greedy(mixed):
  params, batch, ref = mixed
  got = jitted(decoding.sample_decode, top_k=1, top_p=0.5)(params, batch, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(got), ref)
  # Temperature 0 runs the very program greedy decoding runs (same trace, so no second compile).
  greedy = lambda params, batch, rng: decoding.greedy_decode(Transformer(TINY), params, batch, **KW)
  cold = functools.partial(decoding.sample_decode, Transformer(TINY), **KW, temperature=0.0)
  trace = lambda fn: str(jax.make_jaxpr(fn)(params, batch, jax.random.key(0)))
  assert trace(cold) == trace(greedy)


def test_sampling_repeats_with_a_seed_and_varies_across_seeds(mixed):
  params, batch, _ = mixed
  sample = jitted(decoding.sample_decode, temperature=1.5, top_k=100, top_p=0.95)
  first, again, other = (np.asarray(sample(params, batch, jax.random.key(seed))) for seed in (1, 1, 2))
  np.testing.assert_array_equal(first, again)
  assert (first != other).any(axis=1).all()  # every row differs: 8 rows of 12 tokens from ~100


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  kept = lambda **kw: np.isfinite(np.asarray(decoding.filter_logits(logits, **kw)))[0].tolist()
  assert kept(top_k=2) == [False, True, False, True, False]
  assert kept(top_p=0.65) == [False, True, False, True, False]  # 0.4 + 0.3 reach 0.65
  assert kept(top_p=0.75) == [False, True, False, True, True]
  assert kept(top_k=1, top_p=0.99) == [False, True, False, False, False]


# Beam search over a 4-token vocabulary for 4 steps: 4**4 = 256 beams keep every hypothesis.
BEAM_EOS = 2
BEAM_KW = dict(max_decode_length=4, eos_id=BEAM_EOS, vocab_size=4)
WIDTHS = (1, 4, 256)


@pytest.fixture(scope="module")
def beams(mixed):
  """num_beams -> (best continuations [8, 4], their scores [8]), length penalty 1."""
  params, batch, _ = mixed
  search = lambda k: functools.partial(decoding.beam_search, Transformer(TINY), **BEAM_KW, num_beams=k)
  return {k: jax.tree.map(np.asarray, jax.jit(search(k))(params, batch)) for k in WIDTHS}


@pytest.fixture(scope="module")
def every_continuation(mixed):
  """Each row's log-probs [row, continuation, step, token] over all 256 four-token continuations."""
  params, batch, _ = mixed
  conts = list(itertools.product(range(4), repeat=4))
  width = max(LENGTHS) + 4
  x = np.zeros((len(LENGTHS), len(conts), width), np.int32)
  for row, n in enumerate(LENGTHS):
    x[row, :, :n], x[row, :, n:n + 4] = batch["decoder_input_tokens"][row, :n], conts
  prefix = np.broadcast_to(np.arange(width) < np.array(LENGTHS)[:, None, None], x.shape)
  logits = jax.jit(lambda p, x, m: Transformer(TINY).apply({"params": p}, x, prefix_mask=m))(
      params, x.reshape(-1, width), prefix.reshape(-1, width))
  log_probs = np.asarray(jax.nn.log_softmax(logits[..., :4], axis=-1)).reshape(x.shape + (4,))
  return {c: np.stack([log_probs[row, i, n - 1:n + 3] for row, n in enumerate(LENGTHS)])
          for i, c in enumerate(conts)}  # continuation -> [row, step, token]


def score(log_probs, row, seq) -> float:
  """Length-normalised log-prob of a continuation (cut after its EOS)."""
  seq = list(seq)
  length = seq.index(BEAM_EOS) + 1 if BEAM_EOS in seq else len(seq)
  return sum(log_probs[tuple(seq)][row, i, t] for i, t in enumerate(seq[:length])) / length


def test_beam_search_with_one_beam_is_greedy(beams, every_continuation):
  for row, seq in enumerate(beams[1][0]):
    greedy = []
    while len(greedy) < 4 and BEAM_EOS not in greedy:
      log_probs = every_continuation[tuple(greedy + [0] * (4 - len(greedy)))]
      greedy.append(int(np.argmax(log_probs[row, len(greedy)])))
    assert list(seq) == greedy + [0] * (4 - len(greedy))
  ended = (beams[1][0] == BEAM_EOS).any(axis=1)
  assert ended.any() and not ended.all()


def test_beam_scores_are_length_normalised_log_probs(beams, every_continuation):
  for seqs, scores in beams.values():
    for row, seq in enumerate(seqs):
      np.testing.assert_allclose(scores[row], score(every_continuation, row, seq), rtol=1e-5)


def test_a_wider_beam_never_scores_lower(beams, every_continuation):
  # Beam search is not monotone in its width in general; keeping every hypothesis makes it exact.
  best = [max(score(every_continuation, row, c) for c in every_continuation) for row, _ in enumerate(LENGTHS)]
  np.testing.assert_allclose(beams[256][1], best, rtol=1e-5)
  for k in WIDTHS:
    assert (beams[k][1] <= beams[256][1] + 1e-5).all()
  assert (beams[4][1] > beams[1][1] + 1e-3).any()  # the beam finds better than greedy somewhere
