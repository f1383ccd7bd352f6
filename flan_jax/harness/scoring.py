"""The harness backend's device work: token lists in, numbers and tokens out, in a few compiled shapes.

- `Scorer.score`: per (context, continuation) token pair, the summed log-probability of the continuation and
  whether greedy decoding would have produced it, as lm-eval defines both (the input is context + continuation
  less its last token, left-truncated to the max length; the continuation's tokens are the last ones scored).
- `Scorer.generate`: greedy (or sampled) continuations of prompts with flan_jax's KV-cache decoding
  (model/decoding.py).

Rows are sorted by length (longest first, as lm-eval's backends do), cut into batches of a fixed number of rows
and right-padded to a bucket length (decoding.bucket: 16, 24, 32, 48, 64, ..., capped at the max length). Only one
compiled program per bucket (and per generation length) exists. Padding rows and positions are never read
back. For a prefix LM (ModelConfig.prefix_lm) the context attends both ways, as the model was trained; the
Hugging Face models it imports are causal.

Multi-host: every process of the job calls the same methods with the same requests (lm-eval's bookkeeping runs
in each; see lm.py) and so builds the same batches; each device takes its rows from its own process's copy, and
the results come back replicated to every process. A fingerprint of each call's requests is compared across the
processes first, so a process that was handed other requests stops the job with a message instead of mixing
batches.
"""

import dataclasses
import functools
import hashlib
from typing import Callable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from flan_jax.errors import UserError
from flan_jax.model import decoding, partitioning
from flan_jax.model.decoding import bucket  # shared with the eval binary's batches
from flan_jax.model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How generate() picks each token when it samples: logits / temperature, then the top_k tokens (0: all) and
  the top_p nucleus, from a key made of `seed` (the same requests and seed give the same tokens)."""
  temperature: float
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 1234


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
    self.replicated = partitioning.replicated(mesh)
    self._score = jax.jit(functools.partial(_score, model), out_shardings=self.replicated)
    self._next = jax.jit(functools.partial(_next_token_log_probs, model), out_shardings=self.replicated)
    self._decoders: dict = {}

  def _put(self, array: np.ndarray) -> jax.Array:
    # Each device takes its block of rows from this process's copy (every process holds the same batch).
    return jax.make_array_from_callback(array.shape, self.sharding, lambda index: array[index])

  def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int,
            progress: Callable[[int], None] = lambda n: None) -> list[tuple[float, bool]]:
    """(log-likelihood, is greedy) of each (context tokens, continuation tokens) pair, in the order given.

    The context must hold at least one token and the continuation at least one and at most `max_length`.
    One-token continuations of the same context (the options of most multiple-choice questions) share one
    forward pass, whose next-token distribution answers them all, as lm-eval's `hf` backend shares it.
    """
    rows = []
    for context, continuation in pairs:
      if not context or not continuation or len(continuation) > max_length:
        raise ValueError(f"cannot score a continuation of {len(continuation)} tokens after {len(context)} "
                         f"context tokens with max_length={max_length}")
      whole = (list(context) + list(continuation))[-(max_length + 1):]
      rows.append((whole, len(continuation)))
    _check_same_requests("loglikelihood", [w + [n] for w, n in rows])
    out: list = [None] * len(rows)
    shared: dict = {}  # the input tokens of one-token continuations -> the requests that end with them
    for i, (whole, n_cont) in enumerate(rows):
      if n_cont == 1:
        shared.setdefault(tuple(whole[:-1]), []).append(i)
    self._score_next_tokens(shared, rows, out, max_length, progress)
    rest = [i for i, (_, n_cont) in enumerate(rows) if n_cont > 1]
    self._score_rows(rest, rows, out, max_length, progress)
    return out

  def _score_next_tokens(self, shared: dict, rows: list, out: list, max_length: int, progress) -> None:
    """Fills `out` for the one-token continuations, one row per distinct input (`shared`'s keys)."""
    inputs = list(shared)
    order = longest_first([len(x) for x in inputs], inputs)
    for start in range(0, len(order), self.rows):
      chunk = order[start:start + self.rows]
      length = bucket(len(inputs[chunk[0]]), max_length)
      tokens = np.zeros((self.rows, length), np.int32)
      last = np.zeros((self.rows,), np.int32)
      prefix = np.zeros((self.rows, length), bool)
      for r, k in enumerate(chunk):
        n = len(inputs[k])
        tokens[r, :n], last[r], prefix[r, :n] = inputs[k], n - 1, True  # the whole input is context
      with partitioning.activate(self.mesh, self.rules):
        log_probs, best = self._next(self.params, *map(self._put, (tokens, last, prefix)))
      log_probs, best = np.asarray(log_probs), np.asarray(best)
      for r, k in enumerate(chunk):
        for i in shared[inputs[k]]:
          target = rows[i][0][-1]
          out[i] = (float(log_probs[r, target]), bool(best[r] == target))
      progress(sum(len(shared[inputs[k]]) for k in chunk))

  def _score_rows(self, indices: list[int], rows: list, out: list, max_length: int, progress) -> None:
    """Fills `out` for the requests `indices` of `rows`, one row each."""
    lengths, keys = [len(rows[i][0]) for i in indices], [tuple(rows[i][0]) for i in indices]
    order = [indices[j] for j in longest_first(lengths, keys)]
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

  def _decoder(self, max_new_tokens: int, stop_ids: tuple, sampling: Optional[Sampling]) -> Callable:
    """The compiled decode for one generation length, set of stop ids and way of picking tokens."""
    key = (max_new_tokens, stop_ids, sampling)
    if key not in self._decoders:
      # The whole output vocabulary, as transformers' generate takes it.
      common = dict(max_decode_length=max_new_tokens, eos_id=stop_ids, vocab_size=self.model.config.vocab_size)
      if sampling is None:
        fn = functools.partial(decoding.greedy_decode, self.model, **common)
      else:
        def fn(params, batch, number):  # the key of a batch: the seed folded with its number
          rng = jax.random.fold_in(jax.random.key(sampling.seed), number)
          return decoding.sample_decode(self.model, params, batch, rng, **common, temperature=sampling.temperature,
                                        top_k=sampling.top_k, top_p=sampling.top_p)
      self._decoders[key] = jax.jit(fn, out_shardings=self.replicated)
    return self._decoders[key]

  def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, max_length: int,
               stop_ids: Sequence[int], progress: Callable[[int], None] = lambda n: None,
               sampling: Optional[Sampling] = None, end_ids: Sequence[int] = ()) -> list[list[int]]:
    """Up to `max_new_tokens` tokens after each prompt, greedy (or as `sampling` says), ending before the first of
    `stop_ids` (EOS: left out) or with the first of `end_ids` (tokens whose text holds a stop string: kept, for
    the caller cuts the text at the string; once a row has one, nothing after it can matter).

    Each prompt (at least one token) is left-truncated to `max_length - max_new_tokens` tokens first. Sampled
    batches draw from `sampling.seed` folded with the batch's number, in the longest-first order. A batch's
    padding rows repeat its first prompt, so that they end when it does and do not hold the batch's loop open.
    """
    keep = max_length - max_new_tokens
    if keep < 1:
      raise ValueError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in max_length={max_length}")
    prompts = [list(p)[-keep:] for p in prompts]
    _check_same_requests("generate_until", prompts + [[max_new_tokens, *stop_ids], list(end_ids)])
    stop_ids, end_ids = set(stop_ids), set(end_ids) - set(stop_ids)
    fn = self._decoder(max_new_tokens, tuple(sorted(stop_ids | end_ids)), sampling)
    out: list = [None] * len(prompts)
    order = longest_first([len(p) for p in prompts], [tuple(p) for p in prompts])
    for start in range(0, len(order), self.rows):
      chunk = order[start:start + self.rows]
      length = bucket(len(prompts[chunk[0]]), keep)
      tokens = np.zeros((self.rows, length), np.int32)
      valid = np.zeros((self.rows, length), np.int32)
      for r, i in enumerate(chunk + [chunk[0]] * (self.rows - len(chunk))):
        tokens[r, :len(prompts[i])] = prompts[i]
        valid[r, :len(prompts[i])] = 1
      batch = {"decoder_input_tokens": self._put(tokens), "decoder_causal_attention": self._put(valid)}
      extra = () if sampling is None else (np.int32(start // self.rows),)
      with partitioning.activate(self.mesh, self.rules):
        generated = np.asarray(fn(self.params, batch, *extra))
      for r, i in enumerate(chunk):
        row = generated[r].tolist()
        end = next((k for k, t in enumerate(row) if t in stop_ids or t in end_ids), len(row))
        out[i] = row[:end + (end < len(row) and row[end] in end_ids)]
      progress(len(chunk))
    return out


def _check_same_requests(kind: str, rows: Sequence[Sequence[int]]) -> None:
  """Stops a multi-host job whose processes were handed different requests (they would build different batches
  of one sharded computation): compares a digest of `rows` across the processes."""
  if jax.process_count() == 1:
    return
  digest = hashlib.sha256(np.concatenate([np.asarray([len(r), *r], np.int64) for r in rows] or [np.zeros(0)])
                          .tobytes()).digest()
  try:
    multihost_utils.assert_equal(np.frombuffer(digest[:8], np.int32))
  except AssertionError as e:
    raise UserError(f"the processes of this job were handed different {kind} requests; every process must run the "
                    "same command, with the same tasks, files and seeds") from e


def _next_token_log_probs(model: Transformer, params, tokens, last, prefix):
  """[batch, vocab] log-probabilities of the token after position `last` [batch] of each row, and [batch] the
  most likely one."""
  logits = model.apply({"params": params}, tokens, prefix_mask=prefix)
  logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
  return jax.nn.log_softmax(logits, axis=-1), jnp.argmax(logits, axis=-1)


def _score(model: Transformer, params, tokens, targets, weights, prefix):
  """[batch] summed log-probabilities of the weighted targets, and [batch] whether each weighted target is the
  argmax of its logits."""
  logits = model.apply({"params": params}, tokens, prefix_mask=prefix)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_lp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  hit = jnp.argmax(logits, axis=-1) == targets
  return jnp.sum(jnp.where(weights > 0, token_lp, 0.0), axis=-1), jnp.all(hit | (weights == 0), axis=-1)
