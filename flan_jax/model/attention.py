"""Attention kernels the model can train and score with, chosen by `ModelConfig.attention`.

- `einsum`: the reference (`einsum_attention`: scores over [batch, heads, q, k] and a materialised mask).
- `xla` / `cudnn`: `jax.nn.dot_product_attention` with that implementation; the mask (segments,
  prefix, causal, sliding window) is passed as a boolean `mask`, or as `is_causal` when there is
  nothing but the causal rule. cuDNN needs a GPU (and bf16 or f16).
- `blocked`: flash-style attention in pure JAX (`blocked_attention`). Queries and keys are cut into
  blocks; each query block runs an online softmax (running max and sum) over the key blocks its
  rows can see, and each block's mask is built from segment ids, token indices and the prefix
  flags, so neither the [q, k] scores nor the mask is ever materialised. A custom VJP recomputes
  the block scores in the backward pass from the saved log-sum-exp, so memory stays
  O(length * block). Key blocks that no query of a block can see (above the causal diagonal,
  outside the sliding window, in other segments) are skipped.
- `splash`: the Pallas TPU splash-attention kernel (`splash_attention`), with a mask fixed at
  compile time (causal, or causal within a sliding window) and'ed with the segment ids. It has no
  per-example prefix, so it does not do prefix LM. `interpret=True` runs it on CPU, for tests.

All of them compute the same function as the reference: causal by token index, bidirectional
between prefix tokens (prefix LM), only within a segment (packing), and GQA where query head i
reads kv head i // (heads / kv_heads).
"""

import functools
import math
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from flan_jax.errors import UserError

Array = jax.Array

IMPLEMENTATIONS = ("einsum", "xla", "cudnn", "blocked", "splash")

_NEG = float(jnp.finfo(jnp.float32).min)  # the score of a masked pair (finite, so no inf - inf)


class MaskInputs(NamedTuple):
  """What the mask is built from, per token ([batch, length]; None: a rule that does not apply)."""
  segment_ids: Optional[Array]  # int, 0 = padding; tokens attend only within their segment
  prefix: Optional[Array]  # bool: prefix tokens attend to each other both ways


def check_backend(implementation: str, interpret: bool = False) -> None:
  """Raises a one-line UserError when `implementation` cannot run on this backend.

  interpret: a Pallas kernel ('splash') runs in interpret mode, which any backend can (slowly).
  """
  if implementation == "cudnn" and jax.default_backend() != "gpu":
    raise UserError(f"ModelConfig.attention='cudnn' needs a GPU (the backend is {jax.default_backend()}); "
                    "use 'xla' or 'einsum'")
  if implementation == "splash" and jax.default_backend() != "tpu" and not interpret:
    raise UserError(f"ModelConfig.attention='splash' needs a TPU (the backend is {jax.default_backend()}); "
                    "use 'blocked' or 'xla', or set ModelConfig.attention_interpret=True (slow, for tests)")


def check_dtype(implementation: str, dtype) -> None:
  """Raises a one-line UserError when `implementation` cannot compute in `dtype` (cuDNN's fused attention takes
  bfloat16 or float16 only; JAX would say so in a NotImplementedError from deep in the trace)."""
  if implementation == "cudnn" and jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise UserError(f"ModelConfig.attention='cudnn' computes in bfloat16 or float16, and ModelConfig.dtype is "
                    f"'{jnp.dtype(dtype).name}': set --gin.ModelConfig.dtype='bfloat16', or use 'xla'")


def attend(query: Array, key: Array, value: Array, mask, *, kernel: str, sliding_window: Optional[int],
           block_size: int, interpret: bool, kv_layout: str = "bskh") -> Array:
  """Attention by `kernel`: query [b, t, n, h] -> [b, t, n, h].

  key/value are [b, s, k, h] ("bskh"), or [b, k, s, h] ("bksh", the KV cache's layout; einsum only).
  `mask` is what Transformer's attention_mask_arg gives for the kernel: MaskInputs for "blocked" and
  "splash", a boolean [b, 1, t, s] mask (or None: causal) for "xla" / "cudnn", a dense mask for "einsum".
  """
  if kernel == "blocked":
    return blocked_attention(query, key, value, mask.segment_ids, mask.prefix, block_size=block_size,
                             sliding_window=sliding_window)
  if kernel == "splash":
    return splash_attention(query, key, value, mask.segment_ids, sliding_window=sliding_window,
                            block_size=block_size, interpret=interpret)
  if kernel in ("xla", "cudnn"):
    return dot_product_attention(query, key, value, None if mask is None else mask[:, 0], implementation=kernel,
                                 sliding_window=sliding_window)
  return einsum_attention(query, key, value, mask, kv_layout)


def einsum_attention(query: Array, key: Array, value: Array, mask: Array, kv_layout: str = "bskh") -> Array:
  """The reference: scores over [b, k, g, t, s] with a materialised mask. Query head i reads kv head
  i // (n // k), as Llama's repeat_kv does."""
  b, t, n, h = query.shape
  k = key.shape[2] if kv_layout == "bskh" else key.shape[1]
  q = query.reshape(b, t, k, n // k, h)
  logits = jnp.einsum(f"btkgh,{kv_layout}->bkgts", q, key).astype(jnp.float32)
  logits = logits / jnp.sqrt(h).astype(jnp.float32)
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(query.dtype)
  return jnp.einsum(f"bkgts,{kv_layout}->btkgh", probs, value).reshape(b, t, n, h)


def dot_product_attention(query: Array, key: Array, value: Array, mask: Optional[Array], *, implementation: str,
                          sliding_window: Optional[int] = None) -> Array:
  """jax.nn.dot_product_attention: query [b, t, n, h], key/value [b, s, k, h] -> [b, t, n, h].

  mask: boolean, broadcastable to [b, 1, t, s] (model.attention_mask's rule: causal, window,
  prefix and segments all in it), or None for causal attention with an optional sliding window.
  """
  check_backend(implementation)
  check_dtype(implementation, query.dtype)
  if mask is not None:
    return jax.nn.dot_product_attention(query, key, value, mask=mask, implementation=implementation)
  window = None if sliding_window is None else (sliding_window - 1, 0)  # i - j < sliding_window
  return jax.nn.dot_product_attention(query, key, value, is_causal=True, local_window_size=window,
                                      implementation=implementation)


def blocked_attention(query: Array, key: Array, value: Array, segment_ids: Optional[Array] = None,
                      prefix: Optional[Array] = None, *, block_size: int = 512,
                      sliding_window: Optional[int] = None) -> Array:
  """Memory-efficient self-attention: query [b, t, n, h], key/value [b, t, k, h] -> [b, t, n, h].

  The mask is model.attention_mask's: key j is visible to query i when j <= i (and
  i - j < sliding_window), or when both are prefix tokens; and, with segment ids, only within a
  segment. Every query sees at least itself. The length is padded up to a multiple of the block.
  """
  if block_size < 1:
    raise UserError(f"ModelConfig.attention_block_size={block_size} must be positive")
  b, t, n, h = query.shape
  kv_heads = key.shape[2]
  block = min(block_size, t)
  padded = -(-t // block) * block
  q = query.reshape(b, t, kv_heads, n // kv_heads, h)  # queries of one kv head together: no K/V repeat

  def pad(x, value=0):
    if padded == t:
      return x
    return jnp.pad(x, [(0, 0), (0, padded - t)] + [(0, 0)] * (x.ndim - 2), constant_values=value)

  # Padded keys come after every real query and are not prefix tokens, so no real query sees them;
  # padded queries see real keys, which keeps their softmax finite, and are cut off below.
  segment_ids = None if segment_ids is None else pad(segment_ids.astype(jnp.int32))
  prefix = None if prefix is None else pad(prefix.astype(bool), False)
  out = _blocked(pad(q), pad(key), pad(value), segment_ids, prefix, block, sliding_window)
  return out[:, :t].reshape(b, t, n, h)


def _block_mask(i: Array, j: Array, block: int, segment_ids: Optional[Array], prefix: Optional[Array],
                sliding_window: Optional[int]) -> Array:
  """[b or 1, 1, 1, block, block] boolean mask between query block i and key block j."""
  qi = i * block + jnp.arange(block)
  kj = j * block + jnp.arange(block)
  mask = kj[None, :] <= qi[:, None]
  if sliding_window is not None:
    mask = mask & (qi[:, None] - kj[None, :] < sliding_window)
  mask = mask[None]
  take = lambda x, start: jax.lax.dynamic_slice_in_dim(x, start * block, block, axis=1)
  if prefix is not None:
    mask = mask | (take(prefix, i)[:, :, None] & take(prefix, j)[:, None, :])
  if segment_ids is not None:
    mask = mask & (take(segment_ids, i)[:, :, None] == take(segment_ids, j)[:, None, :])
  return mask[:, None, None]


def _key_block_ranges(num_blocks: int, block: int, segment_ids: Optional[Array], prefix: Optional[Array],
                      sliding_window: Optional[int]) -> tuple[Array, Array]:
  """([nb], [nb]) int32: for each query block, the key blocks [lo, hi) that may hold a visible key.

  Conservative (blocks inside the range may still be fully masked, and are masked exactly);
  every block outside it is fully masked for every row of the batch.
  """
  i = jnp.arange(num_blocks)[:, None]
  j = jnp.arange(num_blocks)[None, :]
  visible = j <= i
  if sliding_window is not None:  # the closest pair of the two blocks is inside the window
    visible = visible & (i * block - ((j + 1) * block - 1) < sliding_window)
  visible = visible[None]
  if prefix is not None:
    has_prefix = jnp.any(prefix.reshape(prefix.shape[0], num_blocks, block), axis=-1)  # [b, nb]
    visible = visible | (has_prefix[:, :, None] & has_prefix[:, None, :])
  if segment_ids is not None:  # the two blocks' ranges of segment ids overlap
    seg = segment_ids.reshape(segment_ids.shape[0], num_blocks, block)
    low, high = seg.min(axis=-1), seg.max(axis=-1)
    visible = visible & (jnp.maximum(low[:, :, None], low[:, None, :]) <= jnp.minimum(high[:, :, None],
                                                                                     high[:, None, :]))
  visible = jnp.any(visible, axis=0)  # [nb, nb]; the diagonal is always visible
  lo = jnp.argmax(visible, axis=1).astype(jnp.int32)
  hi = (num_blocks - jnp.argmax(visible[:, ::-1], axis=1)).astype(jnp.int32)
  return lo, hi


def _scores(q_i: Array, k_j: Array) -> Array:
  """[b, k, g, q, s] float32 scores of a query block [b, q, k, g, h] and a key block [b, s, k, h]."""
  s = jnp.einsum("bqkgh,bskh->bkgqs", q_i, k_j, preferred_element_type=jnp.float32)
  return s / jnp.sqrt(q_i.shape[-1]).astype(jnp.float32)


def _forward(q, k, v, segment_ids, prefix, block, sliding_window):
  """(out [b, T, k, g, h], log-sum-exp [b, k, g, T] float32) of padded inputs."""
  b, length, kv_heads, group, h = q.shape
  nb = length // block
  lo, hi = _key_block_ranges(nb, block, segment_ids, prefix, sliding_window)
  take = lambda x, start: jax.lax.dynamic_slice_in_dim(x, start * block, block, axis=1)

  def query_block(i, carry):
    out, lse = carry
    q_i = take(q, i)

    def key_block(j, state):
      m, total, acc = state
      mask = _block_mask(i, j, block, segment_ids, prefix, sliding_window)
      s = jnp.where(mask, _scores(q_i, take(k, j)), _NEG)
      m_new = jnp.maximum(m, s.max(axis=-1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("bkgqs,bskh->bkgqh", p.astype(v.dtype), take(v, j), preferred_element_type=jnp.float32)
      return m_new, alpha * total + p.sum(axis=-1), alpha[..., None] * acc + pv

    stats = jnp.full((b, kv_heads, group, block), _NEG, jnp.float32)
    init = (stats, jnp.zeros_like(stats), jnp.zeros((b, kv_heads, group, block, h), jnp.float32))
    m, total, acc = jax.lax.fori_loop(lo[i], hi[i], key_block, init)
    total = jnp.where(total == 0, 1.0, total)  # a row that sees nothing (impossible here: each sees itself)
    o = (acc / total[..., None]).transpose(0, 3, 1, 2, 4).astype(q.dtype)  # [b, q, k, g, h]
    out = jax.lax.dynamic_update_slice_in_dim(out, o, i * block, axis=1)
    lse = jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(total), i * block, axis=3)
    return out, lse

  init = (jnp.zeros_like(q), jnp.zeros((b, kv_heads, group, length), jnp.float32))
  return jax.lax.fori_loop(0, nb, query_block, init)


def _backward(q, k, v, segment_ids, prefix, out, lse, d_out, block, sliding_window):
  """(dq, dk, dv) of padded inputs, recomputing each block's probabilities from the log-sum-exp."""
  length = q.shape[1]
  nb = length // block
  lo, hi = _key_block_ranges(nb, block, segment_ids, prefix, sliding_window)
  take = lambda x, start, axis=1: jax.lax.dynamic_slice_in_dim(x, start * block, block, axis=axis)
  scale = 1.0 / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
  # D_i = sum_h dO * O = sum_j P_ij dP_ij: the softmax's backward term, [b, k, g, T].
  delta = jnp.einsum("btkgh,btkgh->bkgt", d_out.astype(jnp.float32), out.astype(jnp.float32))

  def query_block(i, carry):
    dq, dk, dv = carry
    q_i, do_i = take(q, i), take(d_out, i)
    lse_i, delta_i = take(lse, i, axis=3), take(delta, i, axis=3)

    def key_block(j, state):
      dq_i, dk, dv = state
      k_j, v_j = take(k, j), take(v, j)
      mask = _block_mask(i, j, block, segment_ids, prefix, sliding_window)
      p = jnp.where(mask, jnp.exp(_scores(q_i, k_j) - lse_i[..., None]), 0.0)  # [b, k, g, q, s]
      dv_j = jnp.einsum("bkgqs,bqkgh->bskh", p.astype(do_i.dtype), do_i, preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgh,bskh->bkgqs", do_i, v_j, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None]) * scale).astype(q.dtype)
      dq_i = dq_i + jnp.einsum("bkgqs,bskh->bqkgh", ds, k_j, preferred_element_type=jnp.float32)
      dk_j = jnp.einsum("bkgqs,bqkgh->bskh", ds, q_i, preferred_element_type=jnp.float32)
      dk = jax.lax.dynamic_update_slice_in_dim(dk, take(dk, j) + dk_j, j * block, axis=1)
      dv = jax.lax.dynamic_update_slice_in_dim(dv, take(dv, j) + dv_j, j * block, axis=1)
      return dq_i, dk, dv

    dq_i = jnp.zeros(q_i.shape, jnp.float32)
    dq_i, dk, dv = jax.lax.fori_loop(lo[i], hi[i], key_block, (dq_i, dk, dv))
    return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * block, axis=1), dk, dv

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  dq, dk, dv = jax.lax.fori_loop(0, nb, query_block, init)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blocked(q, k, v, segment_ids, prefix, block, sliding_window):
  return _forward(q, k, v, segment_ids, prefix, block, sliding_window)[0]


def _blocked_fwd(q, k, v, segment_ids, prefix, block, sliding_window):
  out, lse = _forward(q, k, v, segment_ids, prefix, block, sliding_window)
  return out, (q, k, v, segment_ids, prefix, out, lse)


def _blocked_bwd(block, sliding_window, residuals, d_out):
  q, k, v, segment_ids, prefix, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, segment_ids, prefix, out, lse, d_out, block, sliding_window)
  return dq, dk, dv, None, None


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def splash_attention(query: Array, key: Array, value: Array, segment_ids: Optional[Array], *,
                     sliding_window: Optional[int], block_size: int, interpret: bool = False) -> Array:
  """The Pallas TPU splash-attention kernel: query [b, t, n, h], key/value [b, t, k, h] -> [b, t, n, h].

  Key j is visible to query i when j <= i (and i - j < sliding_window) and, with segment ids
  [b, t], when both have the same id (padding, id 0, attends to padding, as in the einsum). There
  is no prefix LM: the kernel's mask is fixed when it is built, once per (length, heads, window,
  block), and only the segment ids vary per example. GQA is native (query head i reads kv head
  i // (n / k)), so K/V are not repeated. The kernel does not scale the scores, so the queries are
  divided by sqrt(h) first. Every block (forward and backward) is min(block_size, t); t must be a
  multiple of it, and it of 128. `interpret` runs the kernel in Pallas' interpreter (any backend,
  slowly). A pallas_call cannot be partitioned automatically, so under a mesh of several devices
  the kernel runs in a shard_map: batch split as the `activation_batch` rule says, heads as
  `activation_heads` / `activation_kv_heads` say (each only where it divides evenly; the rest is
  replicated).
  """
  check_backend("splash", interpret)
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
  b, t, n, h = query.shape
  lanes = splash_kernel.NUM_LANES
  block = min(block_size, t)
  if block % lanes or t % block:
    raise UserError(f"ModelConfig.attention='splash' needs the sequence length ({t}) to be a multiple of its block "
                    f"(min(ModelConfig.attention_block_size={block_size}, length) = {block}), and the block a "
                    f"multiple of {lanes}; pad the sequences or change attention_block_size")
  scale = 1.0 / jnp.sqrt(h).astype(jnp.float32)
  q = (query.astype(jnp.float32) * scale).astype(query.dtype).transpose(0, 2, 1, 3)  # [b, n, t, h]
  k, v = key.transpose(0, 2, 1, 3), value.transpose(0, 2, 1, 3)  # [b, k, t, h]
  args = (q, k, v) if segment_ids is None else (q, k, v, segment_ids.astype(jnp.int32))
  run = functools.partial(_splash_local, sliding_window=sliding_window, block=block, interpret=interpret)
  specs = _splash_specs(b, n, k.shape[1])
  if specs is None:
    out = run(*args)
  else:
    q_spec, kv_spec, seg_spec = specs
    in_specs = (q_spec, kv_spec, kv_spec, seg_spec)[:len(args)]  # k/v have kv heads where q has heads
    out = jax.shard_map(run, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)
  return out.transpose(0, 2, 1, 3)


def _splash_local(q: Array, k: Array, v: Array, segment_ids: Optional[Array] = None, *,
                  sliding_window: Optional[int], block: int, interpret: bool) -> Array:
  """The kernel vmapped over the batch: q [b, n, t, h], k/v [b, k, t, h] (one device's shard)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
  sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                   block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                                   block_kv_dq=block)
  # The kernel object is made in every trace (its block tables become small constants of this one;
  # cached, they would leak tracers out of autodiff's partial evaluation); the tables themselves are
  # computed once per mask and block shape, in numpy, by the library's cache.
  kernel = splash_kernel.make_splash_mha_single_device(_splash_mask(q.shape[2], q.shape[1], sliding_window),
                                                      block_sizes=sizes, interpret=interpret)
  if segment_ids is None:
    return jax.vmap(kernel)(q, k, v)
  return jax.vmap(kernel)(q, k, v, splash_kernel.SegmentIds(segment_ids, segment_ids))


@functools.lru_cache(maxsize=16)
def _splash_mask(length: int, heads: int, sliding_window: Optional[int]):
  """The lazy mask (a splash MultiHeadMask) of one example [heads, length, length]: causal, or causal
  within the window."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  shape = (length, length)
  if sliding_window is None:
    mask = splash_mask.CausalMask(shape)
  else:  # keys i - (window - 1) .. i
    mask = splash_mask.LocalMask(shape, (sliding_window - 1, 0), offset=0)
  return splash_mask.MultiHeadMask([mask] * heads)


def _splash_specs(batch: int, heads: int, kv_heads: int) -> Optional[tuple[PartitionSpec, ...]]:
  """shard_map specs (q [b, n, t, h], k/v [b, k, t, h], segment ids [b, t]) over the active mesh.

  None when no mesh of more than one device is active. The batch splits over the mesh axes of the
  `activation_batch` rule and the heads over those of `activation_heads`, when the latter are also
  `activation_kv_heads`'s (so each shard keeps whole GQA groups) and every split divides evenly.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  # One name at a time: in one spec, flax would keep a mesh axis only for the first name that maps to it.
  batch_axes, head_axes, kv_axes = (nn.logical_to_mesh_axes((name,))[0] for name in (
      "activation_batch", "activation_heads", "activation_kv_heads"))
  names = lambda axes: () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  size = lambda axes: math.prod(mesh.shape[a] for a in names(axes))
  if batch % size(batch_axes):
    batch_axes = None
  if head_axes != kv_axes or heads % size(head_axes) or kv_heads % size(head_axes) or (
      set(names(head_axes)) & set(names(batch_axes))):
    head_axes = None
  heads_spec = PartitionSpec(batch_axes, head_axes, None, None)
  return heads_spec, heads_spec, PartitionSpec(batch_axes, None)
