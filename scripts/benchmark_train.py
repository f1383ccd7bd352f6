"""Benchmark the sharded train step: step time, tokens/s, model FLOPs utilization, peak memory.

    python scripts/benchmark_train.py --gin_file=models/llama_1b.gin --batch_size=8 --seq_len=2048
    python scripts/benchmark_train.py --gin_file=models/tiny.gin --gin_file=mesh/cpu8.gin  # CPU
    python scripts/benchmark_train.py --gin_file=models/llama_1b.gin --gin.ModelConfig.remat_policy=full

Gin flags are the binaries' (flan_jax/cli.py): `--gin_file=PATH` (repeatable; default
models/tiny.gin), `--gin.NAME=VALUE` and `--gin_search_paths=DIR,DIR`.

MFU = (6 * N * tokens + attention FLOPs) / step time / (devices * peak), where N counts the
parameters used in matmuls (all but the embedding lookup table, unless it is tied to the output
layer) and the peak is a large matmul in the model's compute dtype measured in the same run.
Prints a table and writes the figures as JSON (--output).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from flan_jax import cli, data, optimizers, partitioning, trainer  # noqa: E402
from flan_jax.errors import UserError, first_line  # noqa: E402
from flan_jax.model import ModelConfig  # noqa: E402


def measure_peak_flops(dtype: str, size: int, repeats: int = 10) -> float:
  """FLOP/s of one device on a size x size matmul in `dtype` (the best of `repeats`)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.dtype(dtype))
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def model_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int) -> float:
  matmul_params = cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
  dense = 6 * matmul_params * batch * seq_len
  # QK^T and PV: 2 matmuls x 2 FLOPs x T^2 x heads x head_dim per layer forward; x3 for training.
  attention = 12 * cfg.num_layers * batch * seq_len**2 * cfg.num_heads * cfg.head_dim
  return dense + attention


def synthetic_batch(batch: int, seq_len: int, vocab: int, half_prefix: bool) -> dict:
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, size=(batch, seq_len), dtype=np.int32)
  out = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
         "decoder_loss_weights": np.ones_like(tokens), "decoder_segment_ids": np.ones_like(tokens),
         "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()}
  if half_prefix:
    out["decoder_causal_attention"] = (np.arange(seq_len) < seq_len // 2).astype(np.int32)[None].repeat(batch, 0)
  return out


def peak_memory_bytes() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host max RSS"


GIN_FLAGS = ("--gin_file", "--gin_search_paths")


def split_gin_flags(argv) -> tuple[list[str], list[str]]:
  """(the gin flags, parsed as the binaries parse them; the benchmark's own flags)."""
  gin_args, rest = [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    name, eq, _ = arg.partition("=")
    if name.startswith("--gin.") or name in GIN_FLAGS:
      gin_args.append(arg)
      if not eq and name in GIN_FLAGS and args:
        gin_args.append(args.pop(0))
    else:
      rest.append(arg)
  if not any(a.partition("=")[0] == "--gin_file" for a in gin_args):
    gin_args.insert(0, "--gin_file=models/tiny.gin")
  return gin_args, rest


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="gin: --gin_file=PATH (repeatable; default models/tiny.gin), --gin.NAME=VALUE, --gin_search_paths=DIR,DIR")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=512)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--num_microbatches", type=int, default=1)
  parser.add_argument("--matmul_size", type=int, default=None, help="default: 8192 on accelerators, 2048 on CPU")
  parser.add_argument("--output", default="benchmark_train.json")
  gin_args, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)

  cli.configure_gin(cli.parse_flags(gin_args))
  cfg = ModelConfig()
  mesh = partitioning.make_mesh()
  rules = partitioning.axis_rules()
  schedule = optimizers.make_schedule(args.steps + args.warmup)
  tx = optimizers.make_optimizer(schedule)
  s = trainer.setup(cfg, mesh, rules, tx, seq_len=args.seq_len)
  step = trainer.compile_train_step(s, tx, schedule, num_microbatches=args.num_microbatches)
  state = s.init(jax.random.key(0))
  batch = data.to_global(synthetic_batch(args.batch_size, args.seq_len, min(cfg.vocab_size, 32000), True),
                                     s.batch_sharding)

  compile_start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - compile_start
  for _ in range(args.warmup - 1):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  size = args.matmul_size or (2048 if on_cpu else 8192)
  peak = measure_peak_flops(cfg.dtype, size)
  step_time = statistics.median(times)
  tokens = args.batch_size * args.seq_len
  flops = model_flops_per_step(cfg, args.batch_size, args.seq_len)
  memory, memory_kind = peak_memory_bytes()
  result = {
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "num_devices": jax.device_count(),
      "host_machine": platform.machine(), "mesh": dict(mesh.shape),
      "params": cfg.num_params(), "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
      "remat_policy": cfg.remat_policy, "batch_size": args.batch_size, "seq_len": args.seq_len,
      "num_microbatches": args.num_microbatches, "steps_timed": args.steps,
      "compile_seconds": compile_seconds, "step_seconds_median": step_time,
      "step_seconds_min": min(times), "tokens_per_second": tokens / step_time,
      "model_flops_per_step": flops, "matmul_size": size, "peak_flops_per_device_measured": peak,
      "mfu": flops / step_time / (peak * jax.device_count()),
      "peak_memory_bytes": memory, "peak_memory_kind": memory_kind, "final_loss": float(metrics["loss"]),
  }
  rows = [("device", f"{result['device']} x{result['num_devices']}"), ("mesh", str(result["mesh"])),
          ("parameters", f"{result['params']:,}"), ("dtype", f"{cfg.dtype} (params {cfg.param_dtype})"),
          ("batch x seq", f"{args.batch_size} x {args.seq_len}"), ("compile", f"{compile_seconds:.1f} s"),
          ("step time (median)", f"{step_time * 1e3:.1f} ms"), ("tokens/s", f"{result['tokens_per_second']:,.0f}"),
          ("model TFLOP/step", f"{flops / 1e12:.3f}"),
          ("measured peak / device", f"{peak / 1e12:.2f} TFLOP/s ({size}^2 {cfg.dtype} matmul)"),
          ("MFU", f"{100 * result['mfu']:.1f}%"), ("peak memory", f"{memory / 2**30:.2f} GiB ({memory_kind})")]
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.output}")
  return result


if __name__ == "__main__":
  try:
    main()
  except UserError as e:
    print(f"error: {first_line(e)}", file=sys.stderr)
    sys.exit(2)
