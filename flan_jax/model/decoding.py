"""Decoding with a KV cache (greedy, sampling, beam search) and target scoring for a prefix LM.

Batches are unpacked seqio decoder features: right-padded prompts whose prefix mask gives their lengths. Their
callers (the eval binary, the harness backend) pad each batch to a `bucket` length, not to the longest length
allowed, so a batch of short rows costs what it needs and only a few shapes are ever compiled.
"""

import functools
from typing import Callable, NamedTuple, Sequence, Union

import gin
import jax
import jax.numpy as jnp

from flan_jax import settings
from flan_jax.errors import UserError
from flan_jax.model.transformer import Cache, Transformer, apply_to_features, init_cache

StopIds = Union[int, Sequence[int]]  # the token(s) that end a row: EOS, and e.g. a chat model's end of turn
NEG = -1e9  # the log-probability of a dead beam; finite, so sums and ratios of it stay finite
MIN_BUCKET = 16  # the shortest padded length: shorter batches save little and would each be one more program


def bucket(length: int, max_length: int) -> int:
  """The padded length of a batch whose longest row is `length` tokens: the next of MIN_BUCKET, 24, 32, 48, 64,
  96, ... (powers of two and the halfway steps between them: at most a third of a batch is padding, in two
  compiled shapes per doubling), capped at `max_length`."""
  padded = MIN_BUCKET
  while padded < length:
    padded = padded * 3 // 2 if padded & (padded - 1) == 0 else padded * 4 // 3
  return max(length, min(padded, max_length))


def prompt_lengths(batch) -> jax.Array:
  """Number of leading positions that hold the prompt (BOS + inputs), from the prefix mask."""
  return jnp.sum(batch["decoder_causal_attention"], axis=-1).astype(jnp.int32)


def prefill(model: Transformer, params, batch, slots: int) -> tuple[jax.Array, Cache]:
  """Runs the prompts through the model once: (next-token logits [batch, vocab], cache).

  The cache has `slots` slots per row, at least the batch's length, whose first slots the buffer
  fills; a row attends only to its own prompt, both ways if the model is a prefix LM.
  """
  tokens = batch["decoder_input_tokens"]
  b, length = tokens.shape
  prompt_len = prompt_lengths(batch)
  valid = jnp.arange(length)[None, :] < prompt_len[:, None]  # [b, length]
  cache = init_cache(model.config, b, slots)
  logits, cache = model.apply({"params": params}, jnp.where(valid, tokens, 0), prefix_mask=valid,
                              segment_ids=valid.astype(jnp.int32), cache=cache)
  return logits[jnp.arange(b), jnp.maximum(prompt_len - 1, 0)], cache


def _step(model: Transformer, params, cache: Cache, token: jax.Array,
          position: jax.Array) -> tuple[jax.Array, Cache]:
  """Feeds one token per row (token, position: [batch]): (next-token logits [batch, vocab], cache)."""
  logits, cache = model.apply({"params": params}, token[:, None], positions=position[:, None], cache=cache)
  return logits[:, 0], cache


def is_stop(token: jax.Array, eos_id) -> jax.Array:
  """Whether each token ends its row: `eos_id` is one id or a sequence of them (EOS, end of turn)."""
  return jnp.isin(token, jnp.asarray(eos_id, jnp.int32).reshape(-1))


def _mask_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
  """-inf on the padded part of the output vocabulary (ids >= vocab_size)."""
  return jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)


def _decode(model: Transformer, params, batch, choose, max_decode_length: int, eos_id: StopIds) -> jax.Array:
  """[batch, max_decode_length] tokens, choose(logits [batch, vocab], step) -> [batch] at each step.

  Every row stops at its first stop token (`eos_id`: one id or several; zeros after it); the loop
  ends when all rows have stopped or at max length.
  """
  tokens = batch["decoder_input_tokens"]
  b, length = tokens.shape
  prompt_len = prompt_lengths(batch)
  logits, cache = prefill(model, params, batch, length + max_decode_length - 1)
  token = choose(logits, 0)
  out = jnp.zeros((b, max_decode_length), jnp.int32).at[:, 0].set(token)

  def step(carry):  # feeds the token of step i - 1, chooses that of step i
    i, token, cache, out, done = carry
    logits, cache = _step(model, params, cache, token, prompt_len + i - 1)
    token = jnp.where(done, 0, choose(logits, i))
    return i + 1, token, cache, out.at[:, i].set(token), done | is_stop(token, eos_id)

  def not_finished(carry):
    i, _, _, _, done = carry
    return (i < max_decode_length) & ~jnp.all(done)

  carry = (1, token, cache, out, is_stop(token, eos_id))
  return jax.lax.while_loop(not_finished, step, carry)[3]


def greedy_decode(model: Transformer, params, batch, *, max_decode_length: int, eos_id: StopIds,
                  vocab_size: int) -> jax.Array:
  """[batch, max_decode_length] greedy continuations of each prompt, zero after EOS.

  `vocab_size` masks the padded part of the model's output vocabulary.
  """
  choose = lambda logits, i: jnp.argmax(_mask_vocab(logits, vocab_size), axis=-1).astype(jnp.int32)
  return _decode(model, params, batch, choose, max_decode_length, eos_id)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """logits [batch, vocab] with -inf outside the top_k best tokens (0: all) and the top_p nucleus.

  The nucleus is the smallest set of best tokens whose probability reaches top_p (1.0: all).
  """
  if top_k > 0:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ranked = -jnp.sort(-logits, axis=-1)  # best first
    probs = jax.nn.softmax(ranked, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above each
    cutoff = jnp.min(jnp.where(above < top_p, ranked, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def sample_decode(model: Transformer, params, batch, rng: jax.Array, *, max_decode_length: int,
                  eos_id: StopIds, vocab_size: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """[batch, max_decode_length] sampled continuations of each prompt, zero after EOS.

  Each step divides the logits by `temperature`, keeps the top_k tokens and then the top_p
  nucleus (as Hugging Face orders them), and samples; temperature 0 is greedy decoding.
  """
  if temperature == 0:
    return greedy_decode(model, params, batch, max_decode_length=max_decode_length, eos_id=eos_id,
                         vocab_size=vocab_size)

  def choose(logits, i):
    logits = filter_logits(_mask_vocab(logits, vocab_size) / temperature, top_k, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), logits, axis=-1).astype(jnp.int32)

  return _decode(model, params, batch, choose, max_decode_length, eos_id)


def beam_search(model: Transformer, params, batch, *, max_decode_length: int, eos_id: StopIds,
                vocab_size: int, num_beams: int = 4,
                length_penalty: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(best continuation [batch, max_decode_length], zero after EOS; its score [batch]).

  A hypothesis scores sum(log-probs) / length**length_penalty, its length counting the generated
  tokens with the EOS: Hugging Face's length normalisation, not GNMT's ((5 + length) / 6)**alpha.
  Each step extends the live beams by their 2 * num_beams best tokens; an EOS among the first
  num_beams of those finishes a hypothesis (each row keeps its num_beams best; they grow no more),
  and the best num_beams others stay live. A row is done once it holds num_beams finished
  hypotheses and its best live beam, scored at the current length, beats none of them (Hugging
  Face's default stopping rule); live beams still running at max_decode_length count as they are.
  With num_beams=1 this is greedy decoding.
  """
  tokens = batch["decoder_input_tokens"]
  b, length = tokens.shape
  prompt_len = jnp.repeat(prompt_lengths(batch), num_beams)  # [b * beams]
  logits, cache = prefill(model, params, batch, length + max_decode_length - 1)
  rows = jnp.repeat(jnp.arange(b), num_beams)
  cache = cache.take(rows)
  first = jnp.zeros((b, num_beams), jnp.float32).at[:, 1:].set(NEG)  # one live beam to start
  empty = jnp.zeros((b, num_beams, max_decode_length), jnp.int32)
  state = _BeamState(first, empty, jnp.full((b, num_beams), NEG), empty, jnp.zeros((b,), bool),
                     jnp.zeros((b, num_beams), jnp.int32))
  state = _beam_step(state, logits[rows], 0, eos_id, vocab_size, length_penalty)

  def step(carry):  # feeds the live beams' tokens of step i - 1, extends them with step i
    i, state, cache = carry
    cache = cache.take(state.origin.reshape(-1))
    logits, cache = _step(model, params, cache, state.live_seqs[:, :, i - 1].reshape(-1), prompt_len + i - 1)
    return i + 1, _beam_step(state, logits, i, eos_id, vocab_size, length_penalty), cache

  def not_finished(carry):
    i, state, _ = carry
    return (i < max_decode_length) & ~jnp.all(state.done)

  steps, state, _ = jax.lax.while_loop(not_finished, step, (1, state, cache))
  # Rows still running at max length rank their live beams with the finished ones.
  live_scores = jnp.where(state.done[:, None], NEG, state.live_lp / _length_norm(steps, length_penalty))
  scores, seqs = _top(num_beams, jnp.concatenate([state.scores, live_scores], axis=1),
                      jnp.concatenate([state.seqs, state.live_seqs], axis=1))
  return seqs[:, 0], scores[:, 0]


class _BeamState(NamedTuple):
  """Live beams and finished hypotheses of each row."""
  live_lp: jax.Array  # [b, beams] summed log-probs of the live beams
  live_seqs: jax.Array  # [b, beams, max_decode_length]
  scores: jax.Array  # [b, beams] of the finished hypotheses, best first (NEG: none yet)
  seqs: jax.Array  # [b, beams, max_decode_length] finished hypotheses
  done: jax.Array  # [b]
  origin: jax.Array  # [b, beams] the cache row (of b * beams) that each live beam extends


def _length_norm(length, length_penalty: float) -> jax.Array:
  return jnp.asarray(length, jnp.float32) ** length_penalty


def _top(k: int, scores: jax.Array, *values: jax.Array):
  """The k best of scores [b, n] and the matching entries of each value [b, n, ...]."""
  scores, idx = jax.lax.top_k(scores, k)
  return (scores,) + tuple(jnp.take_along_axis(v, idx.reshape(idx.shape + (1,) * (v.ndim - 2)), axis=1)
                           for v in values)


def _beam_step(state: _BeamState, logits: jax.Array, i, eos_id: StopIds, vocab_size: int,
               length_penalty: float) -> _BeamState:
  """Extends the live beams with their tokens of step i; logits: [b * beams, vocab]."""
  b, beams = state.live_lp.shape
  log_probs = jax.nn.log_softmax(_mask_vocab(logits, vocab_size), axis=-1).reshape(b, beams, -1)
  vocab = log_probs.shape[-1]
  candidates = (state.live_lp[:, :, None] + log_probs).reshape(b, beams * vocab)
  lp, idx = jax.lax.top_k(candidates, 2 * beams)  # [b, 2 * beams], best first
  origin, token = idx // vocab, (idx % vocab).astype(jnp.int32)
  seqs = jnp.take_along_axis(state.live_seqs, origin[:, :, None], axis=1).at[:, :, i].set(token)
  eos = is_stop(token, eos_id)
  norm = _length_norm(i + 1, length_penalty)
  in_top = jnp.arange(2 * beams) < beams  # as in Hugging Face, an EOS counts only among the best beams
  finished = jnp.where(eos & in_top, lp / norm, NEG)
  scores, fin_seqs = _top(beams, jnp.concatenate([state.scores, finished], axis=1),
                          jnp.concatenate([state.seqs, seqs], axis=1))
  scores = jnp.where(state.done[:, None], state.scores, scores)  # a done row's hypotheses are final
  fin_seqs = jnp.where(state.done[:, None, None], state.seqs, fin_seqs)
  live_lp, live_seqs, live_origin = _top(beams, jnp.where(eos, NEG, lp), seqs, origin)
  done = state.done | ((scores[:, -1] > NEG / 2) & (live_lp[:, 0] / norm <= scores[:, -1]))
  origin = jnp.arange(b)[:, None] * beams + live_origin
  return _BeamState(live_lp, live_seqs, scores, fin_seqs, done, origin)


METHODS = ("greedy", "sample", "beam")


@gin.configurable
def decoder(method: str = "greedy", *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            seed: int = 0, num_beams: int = 4, length_penalty: float = 1.0) -> Callable:
  """The eval's decoding function, chosen in gin: `decoder.method = 'beam'`, `decoder.num_beams = 8`.

  Returns fn(model, params, batch, *, max_decode_length, eos_id, vocab_size) -> tokens, like
  greedy_decode. Sampling uses the same key for every batch, so an eval repeats exactly.
  """
  settings.number("decoder.temperature", temperature, low=0, low_open=True)
  settings.integer("decoder.top_k", top_k, minimum=0)
  settings.number("decoder.top_p", top_p, low=0, high=1, low_open=True)
  settings.integer("decoder.seed", seed, minimum=0)
  settings.integer("decoder.num_beams", num_beams)
  settings.number("decoder.length_penalty", length_penalty)
  if method == "greedy":
    return greedy_decode
  if method == "sample":
    return functools.partial(_sample_with_seed, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p)
  if method == "beam":
    return functools.partial(_best_beam, num_beams=num_beams, length_penalty=length_penalty)
  raise UserError(f"decoder.method={method!r} is not a decoding method; choose one of {', '.join(METHODS)}")


def _sample_with_seed(model, params, batch, *, seed: int, **kwargs) -> jax.Array:
  return sample_decode(model, params, batch, jax.random.key(seed), **kwargs)


def _best_beam(model, params, batch, **kwargs) -> jax.Array:
  return beam_search(model, params, batch, **kwargs)[0]


def greedy_decode_reference(model: Transformer, params, batch, *, max_decode_length: int, eos_id: StopIds,
                            vocab_size: int) -> jax.Array:
  """greedy_decode without a cache: recomputes the whole buffer at every step (the tests' reference).

  Generated tokens go into the batch's own buffer, so prompt + continuation must fit its length.
  """
  tokens = batch["decoder_input_tokens"]
  b, length = tokens.shape
  prompt_len = prompt_lengths(batch)
  index = jnp.arange(length)[None, :]
  prefix_mask = index < prompt_len[:, None]
  buf = jnp.where(prefix_mask, tokens, 0)
  valid = jnp.arange(model.config.vocab_size) < vocab_size
  rows = jnp.arange(b)

  def step(carry):
    i, buf, out, done = carry
    logits = model.apply({"params": params}, buf, prefix_mask=prefix_mask)
    read = jnp.minimum(prompt_len - 1 + i, length - 1)
    next_logits = jnp.where(valid, logits[rows, read], -jnp.inf)
    token = jnp.where(done, 0, jnp.argmax(next_logits, axis=-1).astype(jnp.int32))
    out = out.at[:, i].set(token)
    write = prompt_len + i
    buf = buf.at[rows, jnp.minimum(write, length - 1)].set(jnp.where(write < length, token, buf[rows, length - 1]))
    return i + 1, buf, out, done | is_stop(token, eos_id)

  def not_finished(carry):  # stop as soon as every row has produced EOS
    i, _, _, done = carry
    return (i < max_decode_length) & ~jnp.all(done)

  out = jnp.zeros((b, max_decode_length), jnp.int32)
  _, _, out, _ = jax.lax.while_loop(not_finished, step, (0, buf, out, jnp.zeros((b,), bool)))
  return out


def score_targets(model: Transformer, params, batch) -> jax.Array:
  """[batch] log-likelihood of each example's target tokens given its prompt."""
  logits = apply_to_features(model, params, batch)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = batch["decoder_target_tokens"]
  token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_ll * batch["decoder_loss_weights"], axis=-1)
