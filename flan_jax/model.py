"""A Llama-style decoder-only transformer in Flax: RMSNorm, rotary embeddings, SwiGLU, GQA.

Packed sequences are supported through segment ids, and a prefix mask gives bidirectional
attention over the inputs (prefix LM; off for models pretrained causally). Optional pieces cover the
Llama family: q/k/v biases (Qwen2), a sliding attention window (Mistral) and Llama 3 rotary
scaling. Every parameter carries logical axis names
(`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`) that partitioning.py maps
onto the device mesh. The block follows the Llama reference so its weights can be loaded 1:1.
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

Array = jax.Array

REMAT_POLICIES = {
    "none": None,  # keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


ROPE_SCALINGS = ("none", "linear", "llama3")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 384
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 384
  rope_theta: float = 10_000.0
  # Rotary frequency scaling: "none", "linear" (positions / factor) or "llama3" (Llama 3.1's
  # wavelength-dependent scaling, which also uses the three fields after `rope_scaling_factor`).
  rope_scaling: str = "none"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position: int = 8192
  max_position_embeddings: int = 8192  # recorded for export; not enforced
  qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
  sliding_window: Optional[int] = None  # a token sees at most this many tokens, itself included (Mistral)
  prefix_lm: bool = True  # inputs attend to each other both ways; False for causally pretrained models
  norm_eps: float = 1e-5
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  dtype: str = "float32"  # compute dtype, e.g. "bfloat16"
  param_dtype: str = "float32"  # master weights
  remat_policy: str = "none"  # one of REMAT_POLICIES

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise ValueError(f"rope_scaling={self.rope_scaling!r}; choose one of {list(ROPE_SCALINGS)}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}")

  def num_params(self) -> int:
    d, f, h = self.d_model, self.d_ff, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    block = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.num_layers * block + d + head


def _init(scale: float = 0.02):
  return nn.initializers.normal(stddev=scale)


def constrain(x: Array, *names: Optional[str]) -> Array:
  """Pins an activation's sharding by logical axis names (a no-op without axis rules)."""
  return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return x32.astype(self.dtype) * scale.astype(self.dtype)


def rotary_frequencies(config: "ModelConfig") -> Array:
  """[head_dim // 2] inverse wavelengths of the rotary embedding, with the configured scaling."""
  h = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  factor = config.rope_scaling_factor
  if config.rope_scaling == "linear":
    return inv_freq / factor
  if config.rope_scaling == "llama3":
    # Long wavelengths are slowed by `factor`, short ones kept, and those between interpolated.
    wavelength = 2 * jnp.pi / inv_freq
    old = config.rope_original_max_position
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    scaled = jnp.where(wavelength > old / low, inv_freq / factor, inv_freq)
    smooth = (old / wavelength - low) / (high - low)
    between = (wavelength >= old / high) & (wavelength <= old / low)
    return jnp.where(between, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
  return inv_freq


def apply_rotary(x: Array, positions: Array, inv_freq: Array) -> Array:
  """Rotary embedding, Llama convention (rotate the two halves of each head).

  x: [batch, length, heads, head_dim]; positions: [batch, length]; inv_freq: [head_dim // 2].
  """
  half = x.shape[-1] // 2
  angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # [b, t, half]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [b, t, 1, head_dim]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def attention_mask(length: int, segment_ids: Optional[Array], prefix_mask: Optional[Array],
                   sliding_window: Optional[int] = None) -> Array:
  """[batch or 1, 1, 1, q, k] boolean: causal, plus prefix-bidirectional, within one segment.

  With `sliding_window`, a query sees only the last `sliding_window` keys (itself included).
  """
  idx = jnp.arange(length)
  mask = (idx[:, None] >= idx[None, :])[None]  # [1, q, k]
  if sliding_window is not None:
    mask = mask & (idx[:, None] - idx[None, :] < sliding_window)[None]
  if prefix_mask is not None:
    prefix = prefix_mask.astype(bool)
    mask = mask | (prefix[:, :, None] & prefix[:, None, :])
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask[:, None, None]  # broadcast over kv heads and the query group


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array) -> Array:
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model

    def weight(name, shape, axes, init=_init()):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype).astype(dtype)

    def project(name, heads, heads_axis):  # [b, t, heads, h], plus a bias if the config has one
      out = jnp.einsum("btd,dnh->btnh", x, weight(f"w{name}", (d, heads, h), ("embed", heads_axis, "head_dim")))
      if cfg.qkv_bias:
        out = out + weight(f"b{name}", (heads, h), (heads_axis, "head_dim"), nn.initializers.zeros)
      return out

    q, key, value = project("q", n, "heads"), project("k", k, "kv_heads"), project("v", k, "kv_heads")
    wo = weight("wo", (n, h, d), ("heads", "head_dim", "embed"))
    inv_freq = rotary_frequencies(cfg)
    q = apply_rotary(q, positions, inv_freq)
    key = apply_rotary(key, positions, inv_freq)
    q = constrain(q, "activation_batch", "activation_length", "activation_heads", None)

    # Query head i reads kv head i // (n // k), as Llama's repeat_kv does.
    b, t = x.shape[:2]
    q = q.reshape(b, t, k, n // k, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, key).astype(jnp.float32) / jnp.sqrt(h).astype(jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, value).reshape(b, t, n, h)
    return jnp.einsum("btnh,nhd->btd", out, wo)


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)

    def weight(name, shape, axes):
      return self.param(name, nn.with_logical_partitioning(_init(), axes), shape, pdtype).astype(dtype)

    gate = jnp.einsum("btd,df->btf", x, weight("w_gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp")))
    up = jnp.einsum("btd,df->btf", x, weight("w_up", (cfg.d_model, cfg.d_ff), ("embed", "mlp")))
    hidden = constrain(nn.silu(gate) * up, "activation_batch", "activation_length", "activation_mlp")
    return jnp.einsum("btf,fd->btd", hidden, weight("w_down", (cfg.d_ff, cfg.d_model), ("mlp", "embed")))


class Block(nn.Module):
  """One pre-norm transformer layer; shaped as a scan body: (carry, broadcast args) -> (carry, None)."""
  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array, positions: Array):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name=name)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    x = x + drop(Attention(cfg, name="attn")(norm("attn_norm")(x), mask, positions))
    x = x + drop(MLP(cfg, name="mlp")(norm("mlp_norm")(x)))
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    return x, None


class Transformer(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens: Array, *, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, prefix_mask: Optional[Array] = None,
               deterministic: bool = True) -> Array:
    """tokens: [batch, length] int -> logits: [batch, length, vocab] float32.

    segment_ids: packed example ids (0 = padding); positions: position of each token within its
    example (defaults to 0..length-1); prefix_mask: 1 where attention is bidirectional (inputs).
    """
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    mask = attention_mask(tokens.shape[1], segment_ids, prefix_mask if cfg.prefix_lm else None,
                          cfg.sliding_window)

    embedding = self.param("embedding", nn.with_logical_partitioning(_init(1.0), ("vocab", "embed")),
                           (cfg.vocab_size, cfg.d_model), pdtype)
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")

    block = Block
    policy = REMAT_POLICIES[cfg.remat_policy]
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=policy, prevent_cse=False)
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                     in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = layers(cfg, deterministic, name="layers")(x, mask, positions)
    x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)

    if cfg.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", x, embedding.astype(dtype))
    else:
      head = self.param("lm_head", nn.with_logical_partitioning(_init(), ("embed", "vocab")),
                        (cfg.d_model, cfg.vocab_size), pdtype)
      logits = jnp.einsum("btd,dv->btv", x, head.astype(dtype))
    return constrain(logits.astype(jnp.float32), "activation_batch", "activation_length", "activation_vocab")
