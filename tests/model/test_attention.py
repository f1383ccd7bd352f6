"""Tests for flan_jax/model/attention.py: every kernel ModelConfig.attention can choose equals the einsum.

Equal means forward outputs and gradients (w.r.t. q, k, v, and w.r.t. a tiny model's parameters)
agree at float32 within TOL relative to the reference's largest magnitude, with packing (several
segments and padding per row), the prefix-LM mask, GQA (4 heads, 2 kv heads) and, for the kernels,
a sliding window; on one device and on an 8-device (data 2, fsdp 2, tensor 2) mesh. 'splash' (the
Pallas TPU kernel, run here in interpret mode) has no prefix LM and needs 128-token blocks, so it
has its own 256-token inputs.

At the end, the accelerator-only kernels in bfloat16 against the float32 einsum (see BF16_TOL): 'cudnn'
on a GPU and compiled 'splash' on a TPU, kernel and whole model; they skip elsewhere. On a GPU:
`JAX_PLATFORMS=cuda python -m pytest tests/model/test_attention.py -k cudnn`; on a TPU: `-k tpu`.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.errors import UserError
from flan_jax.model import attention, partitioning
from flan_jax.model.transformer import ModelConfig, Transformer, attention_mask, attention_mask_arg, init_cache
from tests.checks import leaf_pairs, one_line_error

TOL = 1e-5  # max |got - want| <= TOL * max |want|, per array (float32)

B, T, N, K, H = 2, 40, 4, 2, 8
SEGMENTS = np.array([[1] * 11 + [2] * 17 + [3] * 7 + [0] * 5,  # three examples, then padding
                     [1] * 23 + [2] * 17])
PREFIX = np.array([[1] * 4 + [0] * 7 + [1] * 6 + [0] * 11 + [1] * 3 + [0] * 4 + [0] * 5,
                   [1] * 9 + [0] * 14 + [1] * 5 + [0] * 12]).astype(bool)
POSITIONS = np.array([list(range(11)) + list(range(17)) + list(range(7)) + [0] * 5,
                      list(range(23)) + list(range(17))])


def assert_close(got, want):
  for g, w in leaf_pairs(got, want):
    g, w = np.asarray(g), np.asarray(w)
    assert g.shape == w.shape, (g.shape, w.shape)
    scale, err = np.max(np.abs(w)), np.max(np.abs(g - w))
    assert err <= TOL * scale, f"max error {err:.2e} > {TOL} x {scale:.2e}"


def reference(q, k, v, seg, prefix, window):
  """model.Attention's einsum path on q [b, t, n, h], k/v [b, t, k, h]."""
  b, t, n, h = q.shape
  mask = attention_mask(t, seg, prefix, window)
  logits = jnp.einsum("btkgh,bskh->bkgts", q.reshape(b, t, k.shape[2], -1, h), k) / jnp.sqrt(h)
  probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, n, h)


def kernel(name, block_size):
  """f(q, k, v, segment_ids, prefix, sliding_window) for the kernel `name`."""
  if name == "blocked":
    return lambda q, k, v, seg, prefix, window: attention.blocked_attention(
        q, k, v, seg, prefix, block_size=block_size, sliding_window=window)

  def xla(q, k, v, seg, prefix, window):
    mask = None if seg is None and prefix is None else attention_mask(q.shape[1], seg, prefix, window)[:, 0]
    return attention.dot_product_attention(q, k, v, mask, implementation="xla", sliding_window=window)
  return xla


@pytest.fixture(scope="module")
def qkv():
  rng = np.random.default_rng(0)
  shapes = [(B, T, N, H), (B, T, K, H), (B, T, K, H), (B, T, N, H)]
  return tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)  # q, k, v, output cotangent


REFERENCE_OUTPUTS = {}  # masks -> the einsum's outputs and gradients


@pytest.mark.parametrize("name,block_size,masks", [
    ("xla", None, "packed+prefix"), ("xla", None, "causal+window"),
    ("blocked", 8, "packed+prefix"), ("blocked", 8, "packed+prefix+window"), ("blocked", 8, "causal+window"),
    ("blocked", 8, "causal"),
    ("blocked", 16, "packed+prefix"),  # a partial last block: 40 = 2 x 16 + 8
    ("blocked", 64, "prefix"),  # one block, longer than the sequence
])
def test_kernel_and_its_gradients_equal_the_einsum(qkv, name, block_size, masks):
  q, k, v, cotangent = qkv
  seg = jnp.asarray(SEGMENTS) if "packed" in masks else None
  prefix = jnp.asarray(PREFIX) if "prefix" in masks else None
  window = 6 if "window" in masks else None
  f = kernel(name, block_size)

  def outputs(fn):
    fn = functools.partial(fn, seg=seg, prefix=prefix, window=window)
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    return jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)

  if masks not in REFERENCE_OUTPUTS:
    REFERENCE_OUTPUTS[masks] = outputs(reference)
  assert_close(outputs(f), REFERENCE_OUTPUTS[masks])


def test_blocked_never_builds_a_length_by_length_array(qkv):
  q, k, v, cotangent = qkv
  seg, prefix = jnp.asarray(SEGMENTS), jnp.asarray(PREFIX)
  loss = lambda q, k, v: jnp.sum(attention.blocked_attention(q, k, v, seg, prefix, block_size=8) * cotangent)
  text = str(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v))
  shapes = {tuple(int(d) for d in s.split(",")) for s in re.findall(r"\[(\d+(?:,\d+)*)\]", text)}
  assert any(s.count(8) >= 2 for s in shapes)  # the [.., block, block] scores are there
  assert not [s for s in shapes if s.count(T) >= 2], "a [.., T, T] array in the blocked attention's program"


def test_blocked_skips_key_blocks_no_query_can_see():
  lo, hi = attention._key_block_ranges(4, 8, jnp.asarray(SEGMENTS[:, :32]), None, None)
  # Causal: query block i reads key blocks up to i. The second row's first example spans blocks
  # 0-2, so query block 2 still reads block 0; block 3 holds neither row's first example.
  np.testing.assert_array_equal(hi, [1, 2, 3, 4])
  np.testing.assert_array_equal(lo, [0, 0, 0, 1])
  lo, hi = attention._key_block_ranges(4, 8, None, None, sliding_window=4)
  np.testing.assert_array_equal(lo, [0, 0, 1, 2])


CONFIG = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=N, num_kv_heads=K, head_dim=H, d_ff=64)


@pytest.fixture(scope="module")
def model_batch():
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, CONFIG.vocab_size, (B, T)) * (SEGMENTS > 0)
  batch = {"tokens": tokens, "segment_ids": SEGMENTS, "positions": POSITIONS, "prefix_mask": PREFIX.astype(np.int32)}
  batch = {name: jnp.asarray(np.concatenate([x, x[:, ::-1]])) for name, x in batch.items()}  # 4 rows, for the mesh
  # Random weights large enough for peaked attention (an init's 0.02 would make it near uniform).
  shapes = jax.eval_shape(Transformer(CONFIG).init, jax.random.key(0), batch["tokens"])["params"]
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray((path[-1].key == "scale") + 0.3 * rng.normal(size=x.value.shape), jnp.float32),
      shapes, is_leaf=lambda x: hasattr(x, "names"))
  return params, batch


def model_outputs(config, params, batch, mesh=None):
  """(logits, gradients of the mean next-token loss w.r.t. the parameters), jitted on `mesh` if given."""
  model = Transformer(config)

  def loss(params):
    logits = model.apply({"params": params}, batch["tokens"], segment_ids=batch["segment_ids"],
                         positions=batch["positions"], prefix_mask=batch["prefix_mask"])
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), batch["tokens"][:, 1:, None], axis=-1)
    return -jnp.mean(logp), logits

  fn = jax.jit(lambda params: jax.value_and_grad(loss, has_aux=True)(params))
  if mesh is None:
    (_, logits), grads = fn(params)
    return logits, grads
  rules = partitioning.axis_rules()
  batch = jax.device_put(batch, partitioning.batch_sharding(mesh, rules))
  with partitioning.activate(mesh, rules):
    (_, logits), grads = fn(params)
  return logits, grads


@pytest.fixture(scope="module")
def model_reference(model_batch):
  return model_outputs(CONFIG, *model_batch)


@pytest.mark.parametrize("name,block_size", [("xla", 512), ("blocked", 16)])
def test_model_logits_and_parameter_gradients_equal_the_einsum(model_batch, model_reference, name, block_size):
  config = dataclasses.replace(CONFIG, attention=name, attention_block_size=block_size)
  assert_close(model_outputs(config, *model_batch), model_reference)


@pytest.mark.parametrize("name", ["einsum", "xla", "blocked"])
def test_on_an_8_device_mesh_equal_the_one_device_einsum(model_batch, model_reference, name):
  assert len(jax.devices()) == 8
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  config = dataclasses.replace(CONFIG, attention=name, attention_block_size=16)
  assert_close(model_outputs(config, *model_batch, mesh=mesh), model_reference)


def test_the_kv_cache_path_uses_the_einsum_whatever_the_choice(model_batch):
  params, batch = model_batch
  tokens = batch["tokens"][:, :8]

  @functools.partial(jax.jit, static_argnums=0)
  def prefill(config):
    return Transformer(config).apply({"params": params}, tokens, cache=init_cache(config, tokens.shape[0], 8))[0]

  want = prefill(CONFIG)
  np.testing.assert_array_equal(prefill(dataclasses.replace(CONFIG, attention="blocked")), want)
  np.testing.assert_array_equal(prefill(dataclasses.replace(CONFIG, attention="xla")), want)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU cudnn runs: the GPU tests below check it")
def test_cudnn_on_cpu_is_a_one_line_error(model_batch):
  params, batch = model_batch
  model = Transformer(dataclasses.replace(CONFIG, attention="cudnn"))
  assert "'xla' or 'einsum'" in one_line_error(lambda: model.apply({"params": params}, batch["tokens"]), "needs a GPU")


def test_cudnn_in_float32_is_a_one_line_error():
  message = one_line_error(lambda: attention.check_dtype("cudnn", jnp.float32), "ModelConfig.dtype is 'float32'")
  assert "--gin.ModelConfig.dtype='bfloat16'" in message
  attention.check_dtype("cudnn", jnp.bfloat16)
  attention.check_dtype("xla", jnp.float32)


def test_unknown_attention_is_a_user_error():
  with pytest.raises(UserError, match="ModelConfig.attention='flash'; choose one of"):
    ModelConfig(attention="flash")
  with pytest.raises(UserError, match="attention_block_size=0 must be positive"):
    ModelConfig(attention="blocked", attention_block_size=0)


# Splash (Pallas, run in interpret mode on CPU): its blocks must be multiples of 128 tokens, so it
# has its own inputs: 4 rows (the mesh splits them 4 ways) of 256 tokens, two blocks of 128.
ST, SH, SPLASH_BLOCK = 256, 32, 128
SPLASH_SEGMENTS = np.array([[1] * 50 + [2] * 100 + [3] * 70 + [0] * 36,  # a segment across the block boundary
                            [1] * 140 + [2] * 116,
                            [1] * 256,
                            [0] * 20 + [1] * 200 + [2] * 36])  # padding first: it attends to itself


def splash(q, k, v, seg, prefix, window):
  assert prefix is None
  return attention.splash_attention(q, k, v, seg, sliding_window=window, block_size=SPLASH_BLOCK, interpret=True)


@pytest.fixture(scope="module")
def splash_qkv():
  rng = np.random.default_rng(2)
  shapes = [(4, ST, N, SH), (4, ST, K, SH), (4, ST, K, SH), (4, ST, N, SH)]
  return tuple(jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)


def splash_and_reference_outputs(qkv, masks, mesh=None):
  """(splash's, the einsum's) outputs and q/k/v gradients; splash jitted under `mesh` if given."""
  q, k, v, cotangent = qkv
  seg = jnp.asarray(SPLASH_SEGMENTS) if "packed" in masks else None
  window = 40 if "window" in masks else None  # queries 128..166 of the second block reach back into the first

  def outputs(fn):
    fn = functools.partial(fn, seg=seg, prefix=None, window=window)
    loss = lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)
    return jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))

  if mesh is None:
    got = outputs(splash)(q, k, v)
  else:
    with partitioning.activate(mesh, partitioning.axis_rules()):
      got = outputs(splash)(q, k, v)
  return got, outputs(reference)(q, k, v)


@pytest.mark.parametrize("masks", ["packed", "packed+window", "causal+window", "causal"])
def test_splash_and_its_gradients_equal_the_einsum(splash_qkv, masks):
  assert_close(*splash_and_reference_outputs(splash_qkv, masks))


@pytest.mark.parametrize("masks", ["packed", "packed+window"])
def test_splash_on_an_8_device_mesh_equals_the_einsum(splash_qkv, masks):
  assert len(jax.devices()) == 8
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  with partitioning.activate(mesh, partitioning.axis_rules()):  # rows over data x fsdp, heads over tensor
    specs = attention._splash_specs(4, N, K)
    assert specs[0] == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None)
    q, k, v, _ = splash_qkv
    program = str(jax.make_jaxpr(lambda q, k, v: splash(q, k, v, None, None, None))(q, k, v))
  assert "shard_map" in program
  assert_close(*splash_and_reference_outputs(splash_qkv, masks, mesh))


def test_splash_builds_no_length_by_length_array(splash_qkv):
  q, k, v, cotangent = splash_qkv
  seg = jnp.asarray(SPLASH_SEGMENTS)
  loss = lambda q, k, v: jnp.sum(splash(q, k, v, seg, None, 40) * cotangent)
  text = str(jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v))
  shapes = {tuple(int(d) for d in s.split(",")) for s in re.findall(r"\[(\d+(?:,\d+)*)\]", text)}
  assert not [s for s in shapes if s.count(ST) >= 2], "a [.., T, T] array in splash attention's program"


SPLASH_CONFIG = dataclasses.replace(CONFIG, head_dim=SH, attention="splash", prefix_lm=False, attention_interpret=True,
                                    attention_block_size=SPLASH_BLOCK)


@pytest.fixture(scope="module")
def splash_model_batch():
  rng = np.random.default_rng(3)
  tokens = rng.integers(1, CONFIG.vocab_size, SPLASH_SEGMENTS.shape) * (SPLASH_SEGMENTS > 0)
  positions = np.stack([np.concatenate([np.arange(n) for n in np.unique(row, return_counts=True)[1]])
                        for row in SPLASH_SEGMENTS])  # every segment here is one run of ids
  batch = {"tokens": tokens, "segment_ids": SPLASH_SEGMENTS, "positions": positions,
           "prefix_mask": np.zeros_like(tokens)}
  batch = {name: jnp.asarray(x) for name, x in batch.items()}
  return random_params(SPLASH_CONFIG, batch["tokens"], rng, 0.3), batch


def random_params(config, tokens, rng, spread):
  """float32 parameters of `config` drawn from `rng`: norm scales around 1, the rest around 0, std `spread`."""
  shapes = jax.eval_shape(Transformer(config).init, jax.random.key(0), tokens)["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.asarray((path[-1].key == "scale") + spread * rng.normal(size=x.value.shape), jnp.float32),
      shapes, is_leaf=lambda x: hasattr(x, "names"))


@pytest.mark.parametrize("on_mesh", [False, True])
def test_splash_model_loss_and_parameter_gradients_equal_the_einsum(splash_model_batch, on_mesh):
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2) if on_mesh else None
  want = model_outputs(dataclasses.replace(SPLASH_CONFIG, attention="einsum"), *splash_model_batch)
  assert_close(model_outputs(SPLASH_CONFIG, *splash_model_batch, mesh=mesh), want)


def test_splash_with_prefix_lm_is_a_one_line_error():
  message = one_line_error(lambda: ModelConfig(attention="splash"), "'splash' cannot do prefix LM")  # prefix LM: on
  assert "ModelConfig.prefix_lm = False" in message and "'blocked'" in message


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="on a TPU splash compiles: the TPU tests below check it")
def test_splash_off_tpu_without_interpret_is_a_one_line_error(splash_model_batch):
  params, batch = splash_model_batch
  model = Transformer(dataclasses.replace(SPLASH_CONFIG, attention_interpret=False))
  assert "attention_interpret=True" in one_line_error(lambda: model.apply({"params": params}, batch["tokens"]),
                                                      "needs a TPU")


def test_splash_length_not_a_multiple_of_the_block_is_a_user_error(splash_model_batch):
  params, batch = splash_model_batch
  model = Transformer(dataclasses.replace(SPLASH_CONFIG, attention_block_size=256))
  with pytest.raises(UserError, match=r"sequence length \(192\) to be a multiple of its block"):
    model.apply({"params": params}, batch["tokens"][:, :192])


# On accelerators, in bfloat16: cudnn (jax.nn.dot_product_attention's cuDNN flash attention) on a GPU, splash
# compiled for a TPU (interpret=False), each called as the model calls it (attention_mask_arg's mask, then
# attention.attend), on bf16 inputs, against the einsum in float32 on the same inputs (exactly representable
# in both). Outputs and q/k/v gradients must agree elementwise within
#   |got - want| <= BF16_TOL * (max |want| + |want|)   (per array: atol scaled by its largest value, and rtol).
# bf16 keeps 8 significant bits (unit roundoff 2^-9 ~ 2e-3); a flash kernel rounds its output, the softmax
# probabilities before P.V, and in the backward pass dS = P (dP - D) before dS.K and dS^T.Q. A gradient
# element is a sum with cancellation, so its relative error means nothing near zero: the atol term, scaled
# by the array's largest value, is what bounds gradients. Calibration on CPU with inputs of these shapes:
# 'xla', 'blocked' (which rounds P and dS to bf16 as flash kernels do) and interpreted 'splash' in bf16 stay
# within 6e-3 x max |want| on outputs and all three gradients, at head_dim 64 and 128 and every mask below
# (splash: those without prefix); a wrong mask (a window of 30 instead of none, or none instead of 40) is
# off by 0.2-0.85 x max |want|. 2e-2 leaves 3x to rounding and at least 5x to a mask error (an element may
# pass at up to 2 x 2e-2 x max |want|).
# test_the_bf16_comparison_passes_xla_and_catches_a_wrong_mask runs the same comparison on any backend, so
# only the accelerator kernels' own calls go unrun on CPU.
BF16_TOL = 2e-2
needs_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN attention)")
needs_tpu = pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU (compiled splash attention)")

AB, AT, AN, AK = 4, 256, 8, 2  # batch, length (a multiple of cuDNN's 64/128-token tiles and of splash's block), heads
ACCEL_BLOCK = 128  # splash's block: two per row, so segments and windows cross a block boundary
ACCEL_WINDOW = 40
ACCEL_SEGMENTS = SPLASH_SEGMENTS  # [4, 256]: packing, padding at the end and at the start


def runs(row):
  """[(start, stop, id)] of the runs of equal ids in a row of segment ids."""
  edges = [0, *(np.flatnonzero(np.diff(row)) + 1), len(row)]
  return [(a, b, row[a]) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def first_thirds(segments):
  """Prefix LM flags: the first third of every example (none of the padding) is its input."""
  prefix = np.zeros(segments.shape, bool)
  for r, row in enumerate(segments):
    for a, b, segment in runs(row):
      prefix[r, a:a + (b - a) // 3] = segment != 0
  return prefix


ACCEL_PREFIX = first_thirds(ACCEL_SEGMENTS)
ACCEL_POSITIONS = np.stack([np.concatenate([np.arange(b - a) for a, b, _ in runs(row)]) for row in ACCEL_SEGMENTS])


def assert_close_at_bf16(got, want, dtype=jnp.bfloat16, tol=BF16_TOL):
  """Every array of `got` is `dtype` (None: any) and within `tol` of `want`'s (see BF16_TOL)."""
  for g, w in leaf_pairs(got, want):
    assert dtype is None or g.dtype == dtype, f"{g.dtype}, not {dtype}: the kernel did not run in bfloat16"
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    scale, err = np.max(np.abs(w)), np.abs(g - w)
    excess = err - tol * (scale + np.abs(w))
    worst = np.unravel_index(np.argmax(excess), w.shape)
    assert np.all(excess <= 0), (f"at {worst}: got {g[worst]:.4g}, want {w[worst]:.4g}; max error "
                                 f"{err.max():.2e} = {err.max() / scale:.2e} x max |want| {scale:.2e}")


def through_attend(name, window, block_size=ACCEL_BLOCK):
  """f(q, k, v, seg, prefix) -> the kernel `name`'s output, with the mask the model would give it."""
  config = ModelConfig(attention=name, sliding_window=window, prefix_lm=name != "splash",
                       attention_block_size=block_size)

  def f(q, k, v, seg, prefix):
    mask = attention_mask_arg(config, q.shape[1], seg, prefix)
    if name in ("xla", "cudnn"):  # causal (and window) alone go as is_causal / local_window_size
      assert (mask is None) == (seg is None and prefix is None)
    return attention.attend(q, k, v, mask, kernel=name, sliding_window=window, block_size=block_size,
                            interpret=False)
  return f


def bf16_inputs(length, head_dim):
  """bf16 (q, k, v, output cotangent, segment ids, prefix, window) of the given length and head_dim."""
  rng = np.random.default_rng(head_dim + length)
  if length == AT:
    batch, seg, prefix, window = AB, ACCEL_SEGMENTS, ACCEL_PREFIX, ACCEL_WINDOW
  else:  # the CPU tests' 40 tokens: not a multiple of cuDNN's tiles
    assert length == T
    batch, seg, prefix, window = B, SEGMENTS, PREFIX, 6
  shapes = [(batch, length, AN, head_dim), (batch, length, AK, head_dim), (batch, length, AK, head_dim),
            (batch, length, AN, head_dim)]
  return (*(jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in shapes), seg, prefix, window)


def bf16_outputs_and_reference(name, head_dim, masks, length=AT):
  """(the kernel's bf16 outputs and q/k/v gradients, the float32 einsum's on the same inputs), and the
  kernel's lowered program (StableHLO text)."""
  q, k, v, cotangent, seg, prefix, window = bf16_inputs(length, head_dim)
  seg = jnp.asarray(seg) if "packed" in masks else None
  prefix = jnp.asarray(prefix) if "prefix" in masks else None
  window = window if "window" in masks else None
  f32 = lambda x: x.astype(jnp.float32)

  def outputs(fn):
    loss = lambda q, k, v: jnp.sum(f32(fn(q, k, v)) * f32(cotangent))
    return jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))

  fn = outputs(lambda q, k, v: through_attend(name, window)(q, k, v, seg, prefix))
  with jax.default_matmul_precision("highest"):  # no TF32 (GPU) or one-pass bf16 (TPU) in the reference
    want = outputs(lambda q, k, v: reference(q, k, v, seg, prefix, window))(f32(q), f32(k), f32(v))
  return fn(q, k, v), want, fn.lower(q, k, v).as_text()


MASKS = ["causal", "causal+window", "packed", "packed+prefix", "packed+prefix+window", "prefix"]


@pytest.mark.parametrize("name,head_dim,masks,length", [
    *(pytest.param("cudnn", h, m, AT, marks=needs_gpu, id=f"cudnn-h{h}-{m}") for h in (64, 128) for m in MASKS),
    pytest.param("cudnn", 64, "packed+prefix+window", T, marks=needs_gpu, id=f"cudnn-h64-packed+prefix+window-t{T}"),
    *(pytest.param("splash", h, m, AT, marks=needs_tpu, id=f"tpu-splash-h{h}-{m}") for h in (64, 128)
      for m in ["causal", "causal+window", "packed", "packed+window"]),
])
def test_bf16_kernel_and_its_gradients_match_the_f32_einsum(name, head_dim, masks, length):
  got, want, program = bf16_outputs_and_reference(name, head_dim, masks, length)
  if name == "cudnn":  # cuDNN's fused attention ran, forward and backward (no fallback to XLA's)
    assert "__cudnn$fmha" in program and re.search(r"__cudnn\$fmha\w*Backward", program)
  else:  # the Mosaic kernel, not the interpreter
    assert "tpu_custom_call" in program
  assert_close_at_bf16(got, want)


@pytest.mark.parametrize("masks", ["causal+window", "packed+prefix+window"])
def test_the_bf16_comparison_passes_xla_and_catches_a_wrong_mask(masks):
  """The accelerator tests' comparison, run with 'xla' (on any backend): it passes a correct kernel in bf16,
  and fails one whose mask is wrong only in its window."""
  got, want, _ = bf16_outputs_and_reference("xla", 64, masks)
  assert_close_at_bf16(got, want)
  q, k, v, cotangent, seg, prefix, _ = bf16_inputs(AT, 64)
  seg = jnp.asarray(seg) if "packed" in masks else None
  prefix = jnp.asarray(prefix) if "prefix" in masks else None
  wrong = through_attend("xla", ACCEL_WINDOW // 2)(q, k, v, seg, prefix)
  with pytest.raises(AssertionError, match="max error"):
    assert_close_at_bf16(wrong, want[0])


# A whole model in bf16 (compute dtype; float32 parameters): the kernel's logits against the einsum's (the
# default kernel, also in bf16). Weights are N(0, 0.125^2), so attention logits have a standard deviation of
# about 0.125^2 x d_model = 2: peaked, but not so near one-hot that bf16 rounding flips which key wins.
# Rounding compounds through the layers (every matmul, norm and residual add rounds to bf16), so the
# tolerance is wider than a kernel's: calibrated on CPU with these inputs, 'xla', 'blocked' and interpreted
# 'splash' in bf16 differ from the bf16 einsum by up to 2.4e-2 x max |logits| (the bf16 einsum from the
# float32 one by up to 4e-2), and the same model with a wrong mask (segments merged, or half the window)
# by 1.0-1.3 x max |logits|.
MODEL_BF16_TOL = 6e-2
ACCEL_CONFIG = ModelConfig(vocab_size=64, d_model=128, num_layers=2, num_heads=AN, num_kv_heads=AK, head_dim=64,
                           d_ff=256, dtype="bfloat16", attention_block_size=ACCEL_BLOCK)


@pytest.fixture(scope="module")
def bf16_model_batch():
  rng = np.random.default_rng(5)
  tokens = rng.integers(1, ACCEL_CONFIG.vocab_size, ACCEL_SEGMENTS.shape) * (ACCEL_SEGMENTS > 0)
  batch = {"tokens": tokens, "segment_ids": ACCEL_SEGMENTS, "positions": ACCEL_POSITIONS,
           "prefix_mask": ACCEL_PREFIX.astype(np.int32)}
  batch = {name: jnp.asarray(x) for name, x in batch.items()}
  return random_params(ACCEL_CONFIG, batch["tokens"], rng, 0.125), batch


def bf16_logits(config, params, batch, masks):
  inputs = {"segment_ids": batch["segment_ids"]} if "packed" in masks else {}
  if "prefix" in masks:
    inputs["prefix_mask"] = batch["prefix_mask"]
  if "window" in masks:
    config = dataclasses.replace(config, sliding_window=ACCEL_WINDOW)
  apply = lambda params: Transformer(config).apply({"params": params}, batch["tokens"], positions=batch["positions"],
                                                   **inputs)
  return jax.jit(apply)(params)


@pytest.mark.parametrize("name,masks", [
    ("xla", "packed+prefix"),  # the comparison itself, on any backend
    pytest.param("cudnn", "packed+prefix", marks=needs_gpu, id="cudnn-packed+prefix"),
    pytest.param("cudnn", "causal+window", marks=needs_gpu, id="cudnn-causal+window"),
    pytest.param("splash", "packed", marks=needs_tpu, id="tpu-splash-packed"),
    pytest.param("splash", "packed+window", marks=needs_tpu, id="tpu-splash-packed+window"),
])
def test_bf16_model_logits_match_the_einsum(bf16_model_batch, name, masks):
  config = dataclasses.replace(ACCEL_CONFIG, prefix_lm="prefix" in masks)
  want = bf16_logits(config, *bf16_model_batch, masks)
  got = bf16_logits(dataclasses.replace(config, attention=name), *bf16_model_batch, masks)
  assert_close_at_bf16(got, want, dtype=None, tol=MODEL_BF16_TOL)  # float32 logits (computed in bf16)
