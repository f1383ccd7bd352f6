"""Benchmark the kernels a train step is made of, one at a time, in JAX (XLA) and in PyTorch, side by side.

    python scripts/benchmark_ops.py --gin_file=models/small.gin --batch_size=16 --seq_len=160 --threads=2

Where scripts/benchmark_train.py --compare_torch gives the whole step's ratio, this says how much of it
is the kernels themselves: each row times one operation at the shapes the model config and batch give
(the projections and their weight gradients, SwiGLU, RMSNorm, the attention softmax, the loss over the
vocabulary), jitted alone in JAX and run eagerly in PyTorch on the same float32 data, the median of
`--repeats` runs each, after checking that both give the same result. Prints a table and writes JSON
(--output). Needs torch; not TensorFlow or seqio.
"""

import argparse
import os
import statistics
import sys
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(SCRIPTS))
sys.path.insert(0, SCRIPTS)

from benchmark_train import import_torch, report, run_main, split_gin_flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from flan_jax import cli  # noqa: E402
from flan_jax.model.transformer import ModelConfig  # noqa: E402


def median_ms(fn, repeats: int) -> float:
  fn()  # compile (JAX) or warm up (PyTorch)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3


def kernels(cfg: ModelConfig, batch: int, seq_len: int, torch) -> list[tuple[str, str, tuple, object, object]]:
  """(name, shape text, input shapes, JAX function, PyTorch function) for each kernel of the step."""
  bt, d, f, v = batch * seq_len, cfg.d_model, cfg.d_ff, cfg.vocab_size
  qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
  scores = (batch, cfg.num_heads, seq_len, seq_len)
  silu_mul = lambda a, b: jax.nn.silu(a) * b

  def rms_norm(x, scale):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps) * scale

  def loss_and_grad(logits, targets):  # the loss over the vocabulary and its gradient
    def loss(logits):
      return jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[:, None], -1)[:, 0])
    return jax.value_and_grad(loss)(logits)

  def torch_loss_and_grad(logits, targets):
    logits = logits.detach().requires_grad_()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    loss.backward()
    return loss, logits.grad

  t_rms = lambda x, scale: x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + cfg.norm_eps) * scale
  return [
      ("q, k, v projection", f"[{bt}, {d}] x [{d}, {qkv}]", ((bt, d), (d, qkv)), jnp.matmul, torch.matmul),
      ("gate / up projection", f"[{bt}, {d}] x [{d}, {f}]", ((bt, d), (d, f)), jnp.matmul, torch.matmul),
      ("down projection", f"[{bt}, {f}] x [{f}, {d}]", ((bt, f), (f, d)), jnp.matmul, torch.matmul),
      ("output layer", f"[{bt}, {d}] x [{d}, {v}]", ((bt, d), (d, v)), jnp.matmul, torch.matmul),
      ("weight gradient (gate)", f"[{bt}, {d}]^T x [{bt}, {f}]", ((bt, d), (bt, f)), lambda x, g: x.T @ g,
       lambda x, g: x.t() @ g),
      ("weight gradient (output)", f"[{bt}, {d}]^T x [{bt}, {v}]", ((bt, d), (bt, v)), lambda x, g: x.T @ g,
       lambda x, g: x.t() @ g),
      ("SwiGLU silu(a) * b", f"[{bt}, {f}]", ((bt, f), (bt, f)), silu_mul,
       lambda a, b: torch.nn.functional.silu(a) * b),
      ("RMSNorm", f"[{bt}, {d}]", ((bt, d), (d,)), rms_norm, t_rms),
      ("attention softmax", "[" + ", ".join(map(str, scores)) + "]", (scores,), lambda s: jax.nn.softmax(s, -1),
       lambda s: torch.softmax(s, -1)),
      ("loss + gradient over the vocabulary", f"[{bt}, {v}]", ((bt, v), "targets"), loss_and_grad,
       torch_loss_and_grad),
  ]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; default: os.cpu_count()")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--output", default="benchmark_ops.json")
  gin_args, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  torch, _ = import_torch()
  threads = args.threads or os.cpu_count()
  torch.set_num_threads(threads)
  cli.configure_gin(cli.parse_flags(gin_args))
  cfg = ModelConfig()
  rng = np.random.default_rng(0)
  rows, results = [], []
  for name, shape, inputs, jax_fn, torch_fn in kernels(cfg, args.batch_size, args.seq_len, torch):
    arrays = [rng.integers(0, cfg.vocab_size, inputs[0][0]).astype(np.int64) if spec == "targets"
              else rng.standard_normal(spec, dtype=np.float32) for spec in inputs]
    jitted = jax.jit(jax_fn)
    on_device = [jnp.asarray(a) for a in arrays]
    jax_ms = median_ms(lambda: jax.block_until_ready(jitted(*on_device)), args.repeats)
    tensors = [torch.from_numpy(a) for a in arrays]
    torch_ms = median_ms(lambda: torch_fn(*tensors), args.repeats)
    # Both compute the same thing: the largest difference relative to the largest value.
    outs = zip(jax.tree.leaves(jitted(*on_device)), jax.tree.leaves(torch_fn(*tensors)))
    difference = max(float(np.max(np.abs(np.asarray(a) - b.detach().numpy())) / np.max(np.abs(np.asarray(a))))
                     for a, b in outs)
    results.append({"kernel": name, "shape": shape, "jax_ms": jax_ms, "torch_ms": torch_ms,
                    "jax_speed_vs_torch": torch_ms / jax_ms, "relative_difference": difference})
    rows.append((f"{name} {shape}", f"JAX {jax_ms:8.3f} ms   PyTorch {torch_ms:8.3f} ms   {torch_ms / jax_ms:5.2f}x"))
  result = {"device": str(jax.devices()[0]), "torch_threads": threads, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "model": {k: getattr(cfg, k) for k in ("vocab_size", "d_model", "d_ff",
                                                                           "num_heads", "num_kv_heads", "head_dim")},
            "jax_version": jax.__version__, "torch_version": torch.__version__, "kernels": results}
  return report(rows, result, args.output)


if __name__ == "__main__":
  run_main(main)
