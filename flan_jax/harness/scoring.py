"""The harness backend's device work: token lists in, numbers and tokens out, in a few compiled shapes.

- `Scorer.score`: per (context, continuation) token pair, the summed log-probability of the continuation and
  whether greedy decoding would have produced it, as lm-eval defines both (the input is context + continuation
  less its last token, left-truncated to the max length; the continuation's tokens are the last ones scored).
- `Scorer.greedy`: greedy continuations of prompts with flan_jax's KV-cache decoding (model/decoding.py).

Rows are sorted by length (longest first, as lm-eval's backends do), cut into batches of a fixed number of rows
and right-padded to a bucket length: a power of two, at least MIN_BUCKET, capped at the max length. Only one
compiled program per bucket (and per generation length) exists. Padding rows and positions are never read
back. For a prefix LM (ModelConfig.prefix_lm) the context attends both ways, as the model was trained; the
Hugging Face models it imports are causal.
"""

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import Transformer

MIN_BUCKET = 16


def bucket(length: int, max_length: int) -> int:
  """The padded length of a batch whose longest row is `length` tokens: the next power of two (at least
  MIN_BUCKET), capped at `max_length`."""
  padded = max(MIN_BUCKET, 1 << max(0, length - 1).bit_length())
  return max(length, min(padded, max_length))


def longest_first(lengths: Sequence[int], keys: Sequence = ()) -> list[int]:
  """Indices ordered by length, longest first (ties by `keys`, then by index): the order batches are cut in."""
  keys = keys or [()] * len(lengths)
  return sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i], i))


class Scorer:
  """Compiled scoring and greedy decoding of one model's parameters on a mesh."""

  def __init__(self, model: Transformer, params, mesh, rules, batch_size: int):
    self.model, self.params, self.mesh, self.rules = model, params, mesh, rules
    data = partitioning.data_parallel_size(mesh, rules)
    self.rows = -(-max(1, batch_size) // data) * data  # whole rows per data-parallel shard
    self.sharding = partitioning.batch_sharding(mesh, rules)
    self._score = jax.jit(functools.partial(_score, model))
    self._greedy: dict = {}

  def _put(self, array: np.ndarray) -> jax.Array:
    return jax.device_put(array, self.sharding)

  def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int,
            progress: Callable[[int], None] = lambda n: None) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each (context tokens, continuation tokens) pair, in the order given.

    The context must hold at least one token and the continuation at least one and at most `max_length`.
    """
    rows = []
    for context, continuation in pairs:
      if not context or not continuation or len(continuation) > max_length:
        raise ValueError(f"cannot score a continuation of {len(continuation)} tokens after {len(context)} "
                         f"context tokens with max_length={max_length}")
      whole = (list(context) + list(continuation))[-(max_length + 1):]
      rows.append((whole, len(continuation)))
    out: list = [None] * len(rows)
    order = longest_first([len(w) for w, _ in rows], [tuple(w) for w, _ in rows])
    for start in range(0, len(order), self.rows):
      chunk = order[start:start + self.rows]
      length = bucket(len(rows[chunk[0]][0]) - 1, max_length)
      tokens = np.zeros((self.rows, length), np.int32)
      targets = np.zeros((self.rows, length), np.int32)
      weights = np.zeros((self.rows, length), np.float32)
      prefix = np.zeros((self.rows, length), bool)
      for r, i in enumerate(chunk):
        whole, n_cont = rows[i]
        n = len(whole) - 1
        tokens[r, :n], targets[r, :n] = whole[:-1], whole[1:]
        weights[r, n - n_cont:n] = 1.0
        prefix[r, :n - n_cont + 1] = True  # the context tokens left after truncation
      with partitioning.activate(self.mesh, self.rules):
        totals, greedy = self._score(self.params, *map(self._put, (tokens, targets, weights, prefix)))
      totals, greedy = np.asarray(totals), np.asarray(greedy)
      for r, i in enumerate(chunk):
        out[i] = (float(totals[r]), bool(greedy[r]))
      progress(len(chunk))
    return out

  def greedy(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, max_length: int,
             stop_ids: Sequence[int], progress: Callable[[int], None] = lambda n: None) -> list[list[int]]:
    """Up to `max_new_tokens` greedy tokens after each prompt, ending before the first of `stop_ids`.

    Each prompt (at least one token) is left-truncated to `max_length - max_new_tokens` tokens first.
    """
    keep = max_length - max_new_tokens
    if keep < 1:
      raise ValueError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in max_length={max_length}")
    prompts = [list(p)[-keep:] for p in prompts]
    fn = self._greedy.get(max_new_tokens)
    if fn is None:
      vocab = self.model.config.vocab_size  # the whole output vocabulary, as transformers' generate takes it
      fn = self._greedy[max_new_tokens] = jax.jit(functools.partial(
          decoding.greedy_decode, self.model, max_decode_length=max_new_tokens, eos_id=tuple(stop_ids),
          vocab_size=vocab))
    out: list = [None] * len(prompts)
    order = longest_first([len(p) for p in prompts])
    for start in range(0, len(order), self.rows):
      chunk = order[start:start + self.rows]
      length = bucket(len(prompts[chunk[0]]), keep)
      tokens = np.zeros((self.rows, length), np.int32)
      valid = np.zeros((self.rows, length), np.int32)
      valid[:, 0] = 1  # padding rows hold a one-token prompt
      for r, i in enumerate(chunk):
        tokens[r, :len(prompts[i])] = prompts[i]
        valid[r, :len(prompts[i])] = 1
      batch = {"decoder_input_tokens": self._put(tokens), "decoder_causal_attention": self._put(valid)}
      with partitioning.activate(self.mesh, self.rules):
        generated = np.asarray(fn(self.params, batch))
      for r, i in enumerate(chunk):
        row = generated[r].tolist()
        ends = [k for k, t in enumerate(row) if t in stop_ids]
        out[i] = row[:ends[0]] if ends else row
      progress(len(chunk))
    return out


def _score(model: Transformer, params, tokens, targets, weights, prefix):
  """[batch] summed log-probabilities of the weighted targets, and [batch] whether each weighted target is the
  argmax of its logits."""
  logits = model.apply({"params": params}, tokens, prefix_mask=prefix)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  hit = jnp.argmax(logits, axis=-1) == targets
  return jnp.sum(jnp.where(weights > 0, token_lp, 0.0), axis=-1), jnp.all(hit | (weights == 0), axis=-1)
