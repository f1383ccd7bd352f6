"""Greedy decoding and target scoring for a prefix LM over unpacked seqio decoder features.

Decoding recomputes the whole sequence at every step (no KV cache yet): simple and exact, and
cheap enough for zero-shot answers of a few dozen tokens.
"""

import jax
import jax.numpy as jnp

from flan_jax.model import Transformer


def prompt_lengths(batch) -> jax.Array:
  """Number of leading positions that hold the prompt (BOS + inputs), from the prefix mask."""
  return jnp.sum(batch["decoder_causal_attention"], axis=-1).astype(jnp.int32)


def greedy_decode(model: Transformer, params, batch, *, max_decode_length: int, eos_id: int,
                  vocab_size: int) -> jax.Array:
  """[batch, max_decode_length] greedy continuations of each prompt, zero after EOS.

  `vocab_size` masks the padded part of the model's output vocabulary.
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
    return i + 1, buf, out, done | (token == eos_id)

  def not_finished(carry):  # stop as soon as every row has produced EOS
    i, _, _, done = carry
    return (i < max_decode_length) & ~jnp.all(done)

  out = jnp.zeros((b, max_decode_length), jnp.int32)
  _, _, out, _ = jax.lax.while_loop(not_finished, step, (0, buf, out, jnp.zeros((b,), bool)))
  return out


def score_targets(model: Transformer, params, batch) -> jax.Array:
  """[batch] log-likelihood of each example's target tokens given its prompt."""
  logits = model.apply({"params": params}, batch["decoder_input_tokens"],
                       prefix_mask=batch["decoder_causal_attention"])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = batch["decoder_target_tokens"]
  token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(token_ll * batch["decoder_loss_weights"], axis=-1)
