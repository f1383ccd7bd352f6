"""Tests for flan_jax/decoding.py: greedy decoding and target scoring against plain references."""

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import decoding
from flan_jax.model import Transformer
from tests.conftest import TINY


def setup():
  model = Transformer(TINY)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  # Two prompts of different lengths in a 12-token buffer: BOS(0) + inputs, then the target slots.
  tokens = jnp.array([[0, 5, 6, 7, 1, 40, 41, 1, 0, 0, 0, 0],
                      [0, 9, 1, 30, 31, 32, 1, 0, 0, 0, 0, 0]])
  prefix = jnp.array([[1] * 5 + [0] * 7, [1] * 3 + [0] * 9])
  return model, params, {"decoder_input_tokens": tokens, "decoder_causal_attention": prefix}


def test_greedy_decode_matches_a_step_by_step_reference():
  model, params, batch = setup()
  out = decoding.greedy_decode(model, params, batch, max_decode_length=3, eos_id=1, vocab_size=300)
  for row, n in enumerate([5, 3]):
    seq = list(np.asarray(batch["decoder_input_tokens"][row, :n]))
    expected = []
    for _ in range(3):
      x = jnp.array([seq])
      logits = model.apply({"params": params}, x, prefix_mask=(jnp.arange(len(seq)) < n)[None])
      token = int(jnp.argmax(logits[0, -1, :300]))
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
