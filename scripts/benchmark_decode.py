"""Benchmark greedy decoding with the KV cache against recomputing, and prefill and scoring throughput.

Usage: python scripts/benchmark_decode.py [--model=models/small.gin] [--new_tokens=32,128] [--output=FILE]
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from flan_jax import cli  # noqa: E402
from flan_jax.model import decoding, partitioning
from flan_jax.model.transformer import ModelConfig, Transformer  # noqa: E402


def timed(fn, *args, repeats: int) -> tuple[float, float]:
  """(compile seconds, median seconds of `repeats` runs after a warm-up run) of a jitted fn on args."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_seconds, statistics.median(times)


def make_batch(batch: int, prompt_len: int, extra: int, vocab: int) -> dict:
  """Prompts of prompt_len random tokens in a buffer with `extra` slots after them."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab, size=(batch, prompt_len + extra), dtype=np.int32)
  prefix = np.broadcast_to(np.arange(prompt_len + extra) < prompt_len, tokens.shape).astype(np.int32)
  return {"decoder_input_tokens": tokens * prefix, "decoder_causal_attention": prefix,
          "decoder_target_tokens": np.roll(tokens, -1, axis=1),
          "decoder_loss_weights": np.roll(1 - prefix, -1, axis=1)}


def random_params(model: Transformer, mesh, rules):
  """The model's initial parameters (seed 0), placed on the mesh by their logical axis names."""
  init = partitioning.param_init_fn(model)
  _, shardings = partitioning.param_shapes_and_shardings(init, mesh, rules)
  with partitioning.activate(mesh, rules):
    return jax.jit(lambda rng: nn.unbox(init(rng)), out_shardings=shardings)(jax.random.key(0))


def bench_model(gin_files: list[str], args) -> list[dict]:
  """Every measurement for one model config (gin files).

  Generated tokens/s is batch x new tokens over a whole decode call, prefill included; no row
  stops early (there is no EOS).
  """
  gin.clear_config()
  cli.configure_gin(cli.Flags(gin_files=gin_files, gin_bindings=args.gin))
  cfg, mesh, rules = ModelConfig(), partitioning.make_mesh(), partitioning.axis_rules()
  model = Transformer(cfg)
  params = random_params(model, mesh, rules)
  b, n, vocab = args.batch_size, args.prompt_len, min(cfg.vocab_size, 32000)
  base = {"model": os.path.splitext(os.path.basename(gin_files[0]))[0], "params": cfg.num_params(),
          "batch_size": b, "prompt_len": n}

  def measure(kind, fn, batch, repeats, **fields) -> dict:
    jitted = jax.jit(fn, out_shardings=partitioning.replicated(mesh))
    batch = jax.device_put(batch, partitioning.batch_sharding(mesh, rules))
    with partitioning.activate(mesh, rules):
      compile_seconds, seconds = timed(jitted, params, batch, repeats=repeats)
    return dict(base, kind=kind, compile_seconds=compile_seconds, seconds=seconds, **fields)

  rows = []
  for new in args.new_tokens:
    batch = make_batch(b, n, new, vocab)
    # eos_id -1 never comes, so every row runs to the end.
    kw = dict(max_decode_length=new, eos_id=-1, vocab_size=cfg.vocab_size)
    cached = measure("greedy_cached", functools.partial(decoding.greedy_decode, model, **kw), batch,
                     args.repeats, new_tokens=new)
    rows.append(dict(cached, tokens_per_second=b * new / cached["seconds"]))
    if args.reference_repeats:
      reference = functools.partial(decoding.greedy_decode_reference, model, **kw)
      ref = measure("greedy_reference", reference, batch, args.reference_repeats, new_tokens=new)
      rows.append(dict(ref, tokens_per_second=b * new / ref["seconds"],
                       speedup=ref["seconds"] / cached["seconds"]))
  prefill = lambda p, batch: decoding.prefill(model, p, batch, n + max(args.new_tokens))[0]
  row = measure("prefill", prefill, make_batch(b, n, 0, vocab), args.repeats)
  rows.append(dict(row, tokens_per_second=b * n / row["seconds"]))
  score = functools.partial(decoding.score_targets, model)
  row = measure("score_targets", score, make_batch(b, n, args.option_len, vocab), args.repeats,
                option_len=args.option_len)
  rows.append(dict(row, examples_per_second=b / row["seconds"]))
  return rows


def format_table(rows: list[dict]) -> str:
  refs = {(r["model"], r["new_tokens"]): r for r in rows if r["kind"] == "greedy_reference"}
  line = lambda *cols: "{:<8} {:<26} {:>12} {:>12} {:>8}  {}".format(*cols)
  lines = [line("model", "measure", "cached", "reference", "speedup", "unit"),
           line("-" * 8, "-" * 26, "-" * 12, "-" * 12, "-" * 8, "-" * 4)]
  for r in rows:
    if r["kind"] == "greedy_cached":
      ref = refs.get((r["model"], r["new_tokens"]))
      lines.append(line(r["model"], f"greedy, {r['new_tokens']} new tokens", f"{r['tokens_per_second']:,.0f}",
                        f"{ref['tokens_per_second']:,.0f}" if ref else "-",
                        f"{ref['speedup']:.1f}x" if ref else "-", "generated tokens/s"))
    elif r["kind"] == "prefill":
      lines.append(line(r["model"], f"prefill, {r['prompt_len']} tokens", f"{r['tokens_per_second']:,.0f}",
                        "", "", "prompt tokens/s"))
    elif r["kind"] == "score_targets":
      lines.append(line(r["model"], f"score_targets, +{r['option_len']} option",
                        f"{r['examples_per_second']:,.1f}", "", "", "examples/s"))
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", action="append", default=[], help="model gin file (repeatable)")
  parser.add_argument("--gin_file", action="append", default=[], help="gin files for all models (a mesh)")
  parser.add_argument("--gin", action="append", default=[], help="e.g. ModelConfig.dtype='bfloat16'")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128])
  parser.add_argument("--option_len", type=int, default=16, help="target tokens per scored example")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--reference_repeats", type=int, default=1, help="0 skips the recomputing reference")
  parser.add_argument("--output", default="benchmark_decode.json")
  args = parser.parse_args(argv)

  rows = []
  try:
    for model_file in args.model or ["models/tiny.gin", "models/small.gin"]:
      rows += bench_model([model_file] + args.gin_file, args)
  finally:
    gin.clear_config()
  device = jax.devices()[0]
  result = {"device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
            "num_devices": jax.device_count(), "host_machine": platform.machine(), "results": rows}
  print(f"{result['device']} x{result['num_devices']}")
  print(format_table(rows))
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.output}")
  return result


if __name__ == "__main__":
  main()
