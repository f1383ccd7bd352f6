"""A Llama-style decoder-only transformer in Flax: RMSNorm, rotary embeddings, SwiGLU, GQA.

Packed sequences are supported through segment ids, and a prefix mask gives bidirectional
attention over the inputs (prefix LM; off for models pretrained causally). Optional pieces cover the
Llama family: q/k/v biases (Qwen2), a sliding attention window (Mistral) and Llama 3 rotary
scaling. Training and scoring run the attention kernel that `ModelConfig.attention` names
(flan_jax/model/attention.py); decoding runs the einsum through a KV cache (`Cache`). Every parameter
carries logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`, `layers`)
that partitioning.py maps onto the device mesh. The block follows the Llama reference so its weights can be loaded 1:1.
"""

import functools
from typing import Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_jax.model import attention as attention_lib
from flan_jax.model import lora as lora_lib
from flan_jax.model.config import DTYPES, REMAT_POLICIES, ROPE_SCALINGS, ModelConfig  # noqa: F401

Array = jax.Array

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: Array, w: Array, contract: int = 1) -> Array:
  """x [..., K...] times w [K..., N...] -> [..., N...], contracting x's last `contract` dims with w's first.

  The product of jnp.einsum("btd,df->btf", x, w) (or "btnh,nhd->btd" with contract=2), with the
  backward pass written out so that the weight gradient is computed as x^T g with x on the left.
  Autodiff puts g on the left, and XLA's CPU backend then computes the elementwise gradient feeding g
  (SwiGLU's, in the MLP) inside a transposed copy, in transposed order: several times slower than the
  product itself (docs/models.md, "Speed on CPU").
  """
  return _dense_fwd(x, w, contract)[0]


def _dense_fwd(x, w, contract):
  dims = ((tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))), ((), ()))
  return jax.lax.dot_general(x, w, dims), (x, w)


def _dense_bwd(contract, residuals, g):
  x, w = residuals
  outer = x.ndim - contract  # x's leading (batch, length) dims, which g shares
  d_x = jax.lax.dot_general(g, w, ((tuple(range(outer, g.ndim)), tuple(range(contract, w.ndim))), ((), ())))
  d_w = jax.lax.dot_general(x, g, ((tuple(range(outer)), tuple(range(outer))), ((), ())))
  return d_x.astype(x.dtype), d_w.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def _init(scale: float = 0.02):
  return nn.initializers.normal(stddev=scale)


def constrain(x: Array, *names: Optional[str]) -> Array:
  """Pins an activation's sharding by logical axis names (a no-op without axis rules)."""
  return nn.with_logical_constraint(x, names)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def dense_frozen(x: Array, w: Array | tuple[Array, Array], dtype: jnp.dtype, contract: int = 1) -> Array:
  """dense(x, w) for a frozen LoRA base's kernel w, stored in another dtype than `dtype` or quantized ((codes,
  scales): lora.dequantize). The stored w is kept for the backward pass instead of its `dtype` copy, which is
  made again there (XLA drops the recomputed product, which the backward pass does not use): so the step does
  not hold every layer's dequantized weights at once. (A bf16 base on XLA's CPU backend is converted whole
  before the layer loop all the same: README, "Memory per model".)"""
  return dense(x, lora_lib.dequantize(*w, dtype) if isinstance(w, tuple) else w.astype(dtype), contract)


def linear(module: nn.Module, x: Array, name: str, shape: tuple, axes: tuple, contract: int = 1, *,
           lora: Optional[lora_lib.LoraConfig] = None, deterministic: bool = True) -> Array:
  """x [..., K...] times the projection `name` [shape] (its first `contract` dims are K), plus the low-rank
  update of its adapter when `lora` targets it (flan_jax/model/lora.py)."""
  cfg = module.config
  dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
  w = lora_lib.kernel_param(module, name, shape, axes, _init(), pdtype, lora)
  if lora is not None and (isinstance(w, tuple) or w.dtype != dtype):  # a frozen base's kernel, converted
    y = dense_frozen(x, w, dtype, contract)
  else:
    y = dense(x, w.astype(dtype), contract)
  if lora is None or not lora.adapts(name):
    return y
  a, b = lora_lib.adapter_params(module, name, shape, axes, contract, lora, pdtype)
  if lora.dropout > 0:
    x = nn.Dropout(lora.dropout, deterministic=deterministic, name=f"{name}_lora_dropout")(x)
  return y + dense(dense(x, a.astype(dtype), contract), b.astype(dtype)) * jnp.asarray(lora.scale, dtype)


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


KV_AXES = ("activation_batch", "activation_kv_heads", "activation_length", None)  # [b, k, s, h]


class Cache(NamedTuple):
  """Keys and values of every layer for a fixed number of slots per row, filled left to right.

  All rows write at the same slot; each slot records its token's position, segment (0: empty or
  padding, which real tokens never attend to) and prefix flag, so a row sees only its own tokens.
  """
  key: Array  # [layers, batch, kv_heads, slots, head_dim]
  value: Array  # [layers, batch, kv_heads, slots, head_dim]
  positions: Array  # [batch, slots] int32
  segment_ids: Array  # [batch, slots] int32
  prefix: Array  # [batch, slots] bool
  index: Array  # [] int32: the next slot to write

  def take(self, rows: Array) -> "Cache":
    """The cache of rows `rows` [n] of this one (repeats or reorders rows, as beam search does)."""
    return Cache(self.key[:, rows], self.value[:, rows], self.positions[rows], self.segment_ids[rows],
                 self.prefix[rows], self.index)


def write_slots(buf: Array, new: Array, index: Array, axis: int = 1) -> Array:
  """buf [..., slots (at axis), ...] with new [..., t, ...] written at slots index..index+t-1."""
  return jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), index, axis=axis)


def init_cache(config: ModelConfig, batch: int, slots: int) -> Cache:
  """An empty cache of `slots` slots per row, in the compute dtype."""
  shape = (config.num_layers, batch, config.num_kv_heads, slots, config.head_dim)
  kv = jnp.zeros(shape, jnp.dtype(config.dtype))
  meta = jnp.zeros((batch, slots), jnp.int32)
  return Cache(kv, kv, meta, meta, meta.astype(bool), jnp.zeros((), jnp.int32))


def cached_attention_mask(positions: Array, segment_ids: Array, prefix: Array, cache: Cache,
                          sliding_window: Optional[int] = None) -> Array:
  """[batch, 1, 1, q, slots] boolean: attention_mask's rule between new tokens and a cache holding them.

  positions, segment_ids, prefix: [batch, q] for the new tokens, as written into the cache.
  """
  q_pos, k_pos = positions[:, :, None], cache.positions[:, None, :]
  mask = k_pos <= q_pos
  if sliding_window is not None:
    mask = mask & (q_pos - k_pos < sliding_window)
  mask = mask | (prefix[:, :, None] & cache.prefix[:, None, :])
  mask = mask & (segment_ids[:, :, None] == cache.segment_ids[:, None, :])
  return mask[:, None, None]


# What Attention gets to mask with: a boolean mask [batch or 1, 1, 1, q, k] (einsum, xla, cudnn, and
# the cache), None for plain causal attention (xla, cudnn), or the mask's inputs (blocked, splash).
MaskArg = Optional[Array | attention_lib.MaskInputs]


def attention_mask_arg(config: ModelConfig, length: int, segment_ids: Optional[Array],
                       prefix_mask: Optional[Array]) -> MaskArg:
  """The `mask` argument of Attention without a cache, in the form config.attention takes."""
  prefix = prefix_mask if config.prefix_lm else None
  if config.attention == "blocked":
    return attention_lib.MaskInputs(segment_ids, None if prefix is None else prefix.astype(bool))
  if config.attention == "splash":  # causal (and window) is the kernel's own mask; prefix_lm is off
    return attention_lib.MaskInputs(segment_ids, None)
  if config.attention != "einsum" and segment_ids is None and prefix is None:
    return None  # is_causal (and local_window_size) in jax.nn.dot_product_attention
  return attention_mask(length, segment_ids, prefix, config.sliding_window)


class Attention(nn.Module):
  """Grouped-query attention, returning (output, this call's keys and values or None).

  Without `kv` it runs ModelConfig.attention's kernel, and `mask` is attention_mask_arg's. With
  `kv` (cached keys and values, each [batch, kv_heads, slots, head_dim]) it runs the einsum: the new
  keys and values take slots index..index+length-1, the queries attend over every slot as `mask`
  allows, and the new keys and values come back as [batch, kv_heads, length, head_dim] for the cache.
  """
  config: ModelConfig
  lora: Optional[lora_lib.LoraConfig] = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: MaskArg, positions: Array, kv: Optional[tuple[Array, Array]] = None,
               index: Optional[Array] = None) -> tuple[Array, Optional[tuple[Array, Array]]]:
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    n, k, h, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model

    def weight(name, shape, axes, init=_init()):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype).astype(dtype)

    def project(name, heads, heads_axis):  # [b, t, heads, h], plus a bias if the config has one
      out = linear(self, x, f"w{name}", (d, heads, h), ("embed", heads_axis, "head_dim"), lora=self.lora,
                   deterministic=self.deterministic)
      if cfg.qkv_bias:
        out = out + weight(f"b{name}", (heads, h), (heads_axis, "head_dim"), nn.initializers.zeros)
      return out

    q, key, value = project("q", n, "heads"), project("k", k, "kv_heads"), project("v", k, "kv_heads")
    output = lambda out: linear(self, out, "wo", (n, h, d), ("heads", "head_dim", "embed"), 2, lora=self.lora,
                                deterministic=self.deterministic)  # [b, t, n, h] -> [b, t, d]
    inv_freq = rotary_frequencies(cfg)
    q = apply_rotary(q, positions, inv_freq)
    key = apply_rotary(key, positions, inv_freq)
    q = constrain(q, "activation_batch", "activation_length", "activation_heads", None)
    # The cache path runs the einsum; so does creating parameters (every kernel makes the same ones),
    # which keeps init and eval_shape free of backend checks.
    kernel = "einsum" if kv is not None or self.is_initializing() else cfg.attention
    if kv is None and kernel == "einsum" and cfg.attention != "einsum":  # initializing: the einsum needs the dense mask
      mask = attention_mask(x.shape[1], None, None, cfg.sliding_window)
    kv_layout, new_kv = "bskh", None
    if kv is not None:  # the cache keeps [b, k, s, h], the layout the attention products read
      kv_layout, new_kv = "bksh", (key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3))
      key, value = (constrain(write_slots(buf, new, index, axis=2), *KV_AXES) for buf, new in zip(kv, new_kv))
    out = attention_lib.attend(q, key, value, mask, kernel=kernel, sliding_window=cfg.sliding_window,
                               block_size=cfg.attention_block_size, interpret=cfg.attention_interpret,
                               kv_layout=kv_layout)
    return output(out), new_kv


class MLP(nn.Module):
  config: ModelConfig
  lora: Optional[lora_lib.LoraConfig] = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    project = functools.partial(linear, self, lora=self.lora, deterministic=self.deterministic)
    gate = project(x, "w_gate", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    up = project(x, "w_up", (cfg.d_model, cfg.d_ff), ("embed", "mlp"))
    hidden = constrain(nn.silu(gate) * up, "activation_batch", "activation_length", "activation_mlp")
    return project(hidden, "w_down", (cfg.d_ff, cfg.d_model), ("mlp", "embed"))


class Block(nn.Module):
  """One pre-norm transformer layer; shaped as a scan body: (carry, args) -> (carry, new kv or None)."""
  config: ModelConfig
  deterministic: bool = True
  lora: Optional[lora_lib.LoraConfig] = None

  @nn.compact
  def __call__(self, x: Array, mask: MaskArg, positions: Array, kv: Optional[tuple[Array, Array]] = None,
               index: Optional[Array] = None):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype), name=name)
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    attn, kv = Attention(cfg, self.lora, self.deterministic, name="attn")(norm("attn_norm")(x), mask, positions, kv,
                                                                          index)
    x = x + drop(attn)
    x = x + drop(MLP(cfg, self.lora, self.deterministic, name="mlp")(norm("mlp_norm")(x)))
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")
    return x, kv


class Transformer(nn.Module):
  config: ModelConfig
  lora: Optional[lora_lib.LoraConfig] = None  # low-rank adapters on the projections (flan_jax/model/lora.py)

  @nn.compact
  def __call__(self, tokens: Array, *, segment_ids: Optional[Array] = None,
               positions: Optional[Array] = None, prefix_mask: Optional[Array] = None,
               deterministic: bool = True, cache: Optional[Cache] = None):
    """tokens: [batch, length] int -> logits: [batch, length, vocab] float32.

    segment_ids: packed example ids (0 = padding); positions: position of each token within its
    example (defaults to 0..length-1); prefix_mask: 1 where attention is bidirectional (inputs).
    cache: decode with a KV cache (one example per row): the tokens fill the cache's next
    `length` slots and attend to all their row has cached; segment_ids then default to 1 and
    positions to the slot indices, and the call returns (logits, the updated cache).
    """
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if cache is not None:
      positions, mask, cache = _write_cache_inputs(cfg, tokens, segment_ids, positions, prefix_mask, cache)
    else:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
      mask = attention_mask_arg(cfg, tokens.shape[1], segment_ids, prefix_mask)

    embedding = self.param("embedding", nn.with_logical_partitioning(_init(1.0), ("vocab", "embed")),
                           (cfg.vocab_size, cfg.d_model), pdtype)
    x = jnp.take(embedding, tokens, axis=0).astype(dtype)
    x = constrain(x, "activation_batch", "activation_length", "activation_embed")

    kv = None if cache is None else (cache.key, cache.value)
    if cfg.scan_layers or self.is_initializing():  # parameters are always created by the scan
      block = Block
      if cfg.remat_policy != "none":
        block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
      in_axes, args = (nn.broadcast, nn.broadcast), (mask, positions)
      if cache is not None:  # each layer also reads its slice of the cache and returns its new keys and values
        in_axes, args = in_axes + (0, nn.broadcast), args + (kv, cache.index)
      layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       in_axes=in_axes, length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, new_kv = layers(cfg, deterministic, self.lora, name="layers")(x, *args)
    else:
      dropout_rngs = [None if deterministic else self.make_rng("dropout") for _ in range(cfg.num_layers)]
      x, new_kv = unrolled_layers(cfg, self.variables["params"]["layers"], x, mask, positions, kv,
                                  None if cache is None else cache.index, dropout_rngs, self.lora)
    x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)

    if cfg.tie_embeddings:
      logits = jnp.einsum("btd,vd->btv", x, embedding.astype(dtype))
    else:
      head = self.param("lm_head", nn.with_logical_partitioning(_init(), ("embed", "vocab")),
                        (cfg.d_model, cfg.vocab_size), pdtype)
      logits = dense(x, head.astype(dtype))
    logits = constrain(logits.astype(jnp.float32), "activation_batch", "activation_length",
                       "activation_vocab")
    if cache is None:
      return logits
    # Every layer's new keys and values [layers, b, k, t, h] go into the cache in one in-place write.
    key, value = (constrain(write_slots(buf, new, cache.index, axis=3), None, *KV_AXES)
                  for buf, new in zip((cache.key, cache.value), new_kv))
    return logits, cache._replace(key=key, value=value, index=cache.index + tokens.shape[1])


def unrolled_layers(cfg: ModelConfig, stacked: Mapping, x: Array, mask: MaskArg, positions: Array,
                    kv: Optional[tuple[Array, Array]], index: Optional[Array],
                    dropout_rngs: list,
                    lora: Optional[lora_lib.LoraConfig] = None) -> tuple[Array, Optional[tuple[Array, Array]]]:
  """The scan of Transformer's layers as a loop: layer i runs Block on slice i of the stacked parameters
  (and of the cache's keys and values); returns (x, the new keys and values stacked as the scan stacks them)."""

  def layer(params, x, kv, rng):
    rngs = {} if rng is None else {"dropout": rng}
    return Block(cfg, rng is None, lora, parent=None).apply({"params": params}, x, mask, positions, kv, index,
                                                            rngs=rngs)

  if cfg.remat_policy != "none":
    layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat_policy])
  new_kv = []
  for i, rng in enumerate(dropout_rngs):
    x, layer_kv = layer(jax.tree.map(lambda a: a[i], stacked), x, None if kv is None else (kv[0][i], kv[1][i]), rng)
    new_kv.append(layer_kv)
  if kv is None:
    return x, None
  return x, tuple(jnp.stack(parts) for parts in zip(*new_kv))


def apply_to_features(model: Transformer, params, batch: Mapping[str, Array], **kwargs) -> Array:
  """The model's logits [batch, length, vocab] for a batch of seqio decoder features.

  decoder_input_tokens are the tokens; decoder_segment_ids, decoder_positions and
  decoder_causal_attention (the prefix mask) are passed when the batch has them (packed batches
  have the first two). `kwargs` go to the model's call (deterministic, rngs).
  """
  return model.apply({"params": params}, batch["decoder_input_tokens"],
                     segment_ids=batch.get("decoder_segment_ids"), positions=batch.get("decoder_positions"),
                     prefix_mask=batch.get("decoder_causal_attention"), **kwargs)


def _write_cache_inputs(cfg: ModelConfig, tokens: Array, segment_ids: Optional[Array],
                        positions: Optional[Array], prefix_mask: Optional[Array],
                        cache: Cache) -> tuple[Array, Array, Cache]:
  """(positions, attention mask, cache with the new tokens' positions, segments and prefix flags)."""
  if positions is None:
    positions = jnp.broadcast_to(cache.index + jnp.arange(tokens.shape[1]), tokens.shape)
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  if prefix_mask is None or not cfg.prefix_lm:
    prefix_mask = jnp.zeros(tokens.shape, bool)
  prefix = prefix_mask.astype(bool)
  write = lambda buf, new: constrain(write_slots(buf, new, cache.index), "activation_batch",
                                     "activation_length")
  cache = cache._replace(positions=write(cache.positions, positions), prefix=write(cache.prefix, prefix),
                         segment_ids=write(cache.segment_ids, segment_ids))
  mask = cached_attention_mask(positions, segment_ids, prefix, cache, cfg.sliding_window)
  return positions, mask, cache
