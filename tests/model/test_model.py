"""Tests for flan_jax/model/transformer.py: shapes, causal and prefix masking, packing, GQA, rotary."""

import dataclasses

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.model import transformer as model_lib
from flan_jax.model.transformer import ModelConfig, Transformer
from tests.checks import assert_trees_close
from tests.conftest import TINY


@pytest.fixture(scope="module")
def setup():
  model = Transformer(TINY)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 250)
  params = model.init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  apply = jax.jit(lambda p, t, **kw: model.apply({"params": p}, t, **kw))
  return model, params, tokens, apply


def test_forward_shapes_and_param_count(setup):
  model, params, tokens, apply = setup
  logits = apply(params, tokens)
  assert logits.shape == (2, 12, TINY.vocab_size) and logits.dtype == jnp.float32
  assert sum(x.size for x in jax.tree.leaves(params)) == TINY.num_params()
  # Layers are stacked on a leading axis of length num_layers.
  assert params["layers"]["attn"]["wq"].shape == (TINY.num_layers, TINY.d_model, TINY.num_heads, TINY.head_dim)
  assert params["layers"]["attn"]["wk"].shape == (TINY.num_layers, TINY.d_model, TINY.num_kv_heads, TINY.head_dim)


def test_causal_masking(setup):
  _, params, tokens, apply = setup
  base = apply(params, tokens)
  t = 6
  changed = apply(params, tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % 250 + 1))
  np.testing.assert_allclose(base[:, : t + 1], changed[:, : t + 1], atol=1e-6)
  assert not np.allclose(base[:, t + 1], changed[:, t + 1])


def test_prefix_is_bidirectional_and_targets_causal(setup):
  _, params, tokens, apply = setup
  prefix = jnp.broadcast_to(jnp.arange(12) < 5, tokens.shape).astype(jnp.int32)
  base = apply(params, tokens, prefix_mask=prefix)
  in_prefix = apply(params, tokens.at[:, 4].set(3), prefix_mask=prefix)
  assert not np.allclose(base[:, 0], in_prefix[:, 0])  # position 0 sees position 4
  in_targets = apply(params, tokens.at[:, 8].set(3), prefix_mask=prefix)
  np.testing.assert_allclose(base[:, :8], in_targets[:, :8], atol=1e-6)


def test_packed_segments_match_separate_runs(setup):
  _, params, _, apply = setup
  a = jnp.array([[5, 6, 7, 8, 9]])
  b = jnp.array([[11, 12, 13]])
  packed = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], axis=1)
  seg = jnp.array([[1] * 5 + [2] * 3 + [0] * 2])
  pos = jnp.array([list(range(5)) + list(range(3)) + [0, 0]])
  out = apply(params, packed, segment_ids=seg, positions=pos)
  np.testing.assert_allclose(out[:, :5], apply(params, a), atol=1e-5)
  np.testing.assert_allclose(out[:, 5:8], apply(params, b), atol=1e-5)


def test_gqa_equals_multi_head_with_repeated_kv():
  gqa_cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64)
  mha_cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=4, head_dim=8, d_ff=64)
  tokens = jnp.arange(1, 9)[None]
  p = Transformer(gqa_cfg).init(jax.random.key(3), tokens)["params"]
  p = jax.tree.map(lambda x: getattr(x, "value", x), p, is_leaf=lambda x: hasattr(x, "names"))
  mha = jax.tree.map(lambda x: x, p)
  for name in ("wk", "wv"):  # Llama's repeat_kv: kv head j serves query heads 2j and 2j+1
    mha["layers"]["attn"][name] = jnp.repeat(p["layers"]["attn"][name], 2, axis=2)
  np.testing.assert_allclose(Transformer(gqa_cfg).apply({"params": p}, tokens),
                             Transformer(mha_cfg).apply({"params": mha}, tokens), atol=1e-5)


def test_rotary_matches_llama_reference():
  x = jax.random.normal(jax.random.key(0), (1, 3, 2, 8))
  pos = jnp.array([[0, 1, 5]])
  inv_freq = model_lib.rotary_frequencies(ModelConfig(head_dim=8, rope_theta=10000.0))
  got = model_lib.apply_rotary(x, pos, inv_freq)
  # The Hugging Face Llama formula, written out with numpy.
  inv = 1.0 / (10000.0 ** (np.arange(0, 8, 2) / 8))
  freqs = np.asarray(pos)[..., None] * inv
  emb = np.concatenate([freqs, freqs], -1)[:, :, None, :]
  xn = np.asarray(x)
  rot = np.concatenate([-xn[..., 4:], xn[..., :4]], -1)
  np.testing.assert_allclose(got, xn * np.cos(emb) + rot * np.sin(emb), atol=1e-5)


def test_rms_norm_epsilon_and_bf16_compute():
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                    d_ff=64, dtype="bfloat16")
  tokens = jnp.arange(1, 5)[None]
  params = Transformer(cfg).init(jax.random.key(0), tokens)["params"]
  leaves = jax.tree.leaves(params)
  assert all(getattr(x, "value", x).dtype == jnp.float32 for x in leaves)  # f32 master weights
  assert Transformer(cfg).apply({"params": params}, tokens).dtype == jnp.float32
  norm = model_lib.RMSNorm(1e-5, jnp.float32, jnp.float32)
  x = jnp.array([[3.0, 4.0]])
  out = norm.apply(norm.init(jax.random.key(0), x), x)
  np.testing.assert_allclose(out, x / np.sqrt(12.5 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_unrolled_layers_equal_the_scan(remat_policy):
  """scan_layers=False runs the same stacked parameters in a loop: same logits, gradients, cached decoding."""
  scanned = dataclasses.replace(TINY, remat_policy=remat_policy, num_layers=3)
  unrolled = dataclasses.replace(scanned, scan_layers=False)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 250)
  params = Transformer(scanned).init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))
  # Unrolled parameters are created by the scan: the same tree, shapes and values.
  unrolled_params = Transformer(unrolled).init(jax.random.key(0), tokens)["params"]
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(getattr(a, "value", a) == b)), unrolled_params, params,
                                   is_leaf=lambda x: hasattr(x, "names")))
  segments = jnp.array([[1] * 7 + [2] * 5, [1] * 12])
  prefix = jnp.array([[1] * 3 + [0] * 9, [1] * 5 + [0] * 7])

  def loss(cfg, p):
    logits = Transformer(cfg).apply({"params": p}, tokens, segment_ids=segments, prefix_mask=prefix)
    return jnp.sum(jax.nn.log_softmax(logits)[..., 0]), logits

  (loss_s, logits_s), grads_s = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p), has_aux=True))(params)
  (loss_u, logits_u), grads_u = jax.jit(jax.value_and_grad(lambda p: loss(unrolled, p), has_aux=True))(params)
  np.testing.assert_allclose(logits_u, logits_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss_u, loss_s, rtol=1e-6)
  assert jax.tree.structure(grads_u) == jax.tree.structure(grads_s) and jax.tree.leaves(grads_s)
  for g_u, g_s in zip(jax.tree.leaves(grads_u), jax.tree.leaves(grads_s), strict=True):
    np.testing.assert_allclose(g_u, g_s, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(g_s))))

  def decode(cfg):  # prompt of 5 tokens, then 3 tokens one at a time, through the cache
    model = Transformer(cfg)
    cache = model_lib.init_cache(cfg, 2, 8)
    logits, cache = model.apply({"params": params}, tokens[:, :5], cache=cache)
    steps = [logits]
    for t in range(5, 8):
      logits, cache = model.apply({"params": params}, tokens[:, t:t + 1], cache=cache)
      steps.append(logits)
    return jnp.concatenate(steps, axis=1), cache

  (out_s, cache_s), (out_u, cache_u) = decode(scanned), decode(unrolled)
  np.testing.assert_allclose(out_u, out_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cache_u.key, cache_s.key, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cache_u.value, cache_s.value, rtol=1e-5, atol=1e-6)


def test_unrolled_dropout_differs_per_layer_and_repeats_with_the_rng():
  cfg = dataclasses.replace(TINY, scan_layers=False, dropout_rate=0.5)
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, 250)
  model = Transformer(cfg)
  params = jax.tree.map(lambda x: getattr(x, "value", x), model.init(jax.random.key(0), tokens)["params"],
                        is_leaf=lambda x: hasattr(x, "names"))

  def run(seed):
    return model.apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(seed)})

  np.testing.assert_array_equal(run(3), run(3))
  assert not np.allclose(run(3), run(4))
  assert not np.allclose(run(3), model.apply({"params": params}, tokens))


@pytest.mark.parametrize("spec,contract", [("btd,df->btf", 1), ("btnh,nhd->btd", 2), ("btd,dnh->btnh", 1)])
def test_dense_and_its_gradients_equal_the_einsum(spec, contract):
  """model.dense writes out its backward pass (for XLA's CPU layouts); the numbers are the einsum's."""
  x_dims, w_dims = spec.split("->")[0].split(",")
  sizes = dict(b=2, t=5, d=6, f=7, n=3, h=4)
  x = jax.random.normal(jax.random.key(0), tuple(sizes[c] for c in x_dims))
  w = jax.random.normal(jax.random.key(1), tuple(sizes[c] for c in w_dims))
  cotangent = jax.random.normal(jax.random.key(2), jnp.einsum(spec, x, w).shape)
  ours = lambda x, w: jnp.sum(model_lib.dense(x, w, contract) * cotangent)
  reference = lambda x, w: jnp.sum(jnp.einsum(spec, x, w) * cotangent)
  np.testing.assert_allclose(model_lib.dense(x, w, contract), jnp.einsum(spec, x, w), rtol=1e-6, atol=1e-6)
  assert_trees_close(jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.grad(reference, (0, 1))(x, w), rtol=1e-5, atol=1e-6)


def test_remat_dots_policies_keep_the_projection_outputs(capsys):
  """dense is a dot product to the remat policies: the "dots" ones save its outputs, "full" recomputes them."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 6))
  ws = [jax.random.normal(jax.random.key(i), (6, 7)) for i in (1, 2)]

  def saved_activations(policy):  # residuals shaped like a projection's output [2, 5, 7]
    f = jax.checkpoint(lambda x, w1, w2: jnp.sum(jnp.tanh(model_lib.dense(x, w1)) * model_lib.dense(x, w2)),
                       policy=model_lib.REMAT_POLICIES[policy])
    jax.ad_checkpoint.print_saved_residuals(f, x, *ws)
    return capsys.readouterr().out.count("f32[2,5,7]")

  assert saved_activations("full") == 0
  assert saved_activations("dots_no_batch") == saved_activations("dots") == 2
