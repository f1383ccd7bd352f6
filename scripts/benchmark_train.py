"""Benchmark the sharded train step: step time, tokens/s, model FLOPs utilization, peak memory.

    python scripts/benchmark_train.py --gin_file=models/llama_1b.gin --batch_size=8 --seq_len=2048
    python scripts/benchmark_train.py --gin_file=models/tiny.gin --gin_file=mesh/cpu8.gin  # CPU
    python scripts/benchmark_train.py --gin_file=models/llama_1b.gin --gin.ModelConfig.remat_policy=full

Gin flags are the binaries' (flan_jax/cli.py): `--gin_file=PATH` (repeatable; default
models/tiny.gin), `--gin.NAME=VALUE` and `--gin_search_paths=DIR,DIR`.

MFU = (6 * N * tokens + attention FLOPs) / step time / (devices * peak), where N counts the
parameters used in matmuls (all but the embedding lookup table, unless it is tied to the output
layer) and the peak is a large matmul in the model's compute dtype measured in the same run.
Memory: the peak in use, and per device the parameters and optimizer state it holds (the bytes of
its shards of the initialised arrays) beside total / devices, which fsdp should reach.
Prints a table and writes the figures as JSON (--output). Needs JAX, not TensorFlow or seqio.

--lora_rank=N times LoRA at rank N (LoraConfig's other settings from gin) on a float base, an int8 base and an
NF4 base beside full fine-tuning of the same model, each in a process of its own so that each peak is its own, and
prints them side by side with the bytes flan_jax.model.lora.train_state_bytes computes from the shapes.

--compare_torch also times the same model in PyTorch (transformers' LlamaForCausalLM from the
config flan_jax exports, float32, torch.optim.AdamW with flan_jax's optimizer settings and
gradient clipping) on the same batch shape, and reports flan_jax tokens/s over PyTorch's.
"""

import argparse
import collections
import glob
import inspect
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import traverse_util  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# No TensorFlow or seqio on this path (tests/test_benchmark.py checks): it runs where only JAX is installed.
from flan_jax import cli  # noqa: E402
from flan_jax.errors import UserError, first_line  # noqa: E402
from flan_jax.model import lora as lora_lib  # noqa: E402
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig  # noqa: E402
from flan_jax.training import optimizers
from flan_jax.training import step as step_lib  # noqa: E402


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


def model_flops_per_step(cfg: ModelConfig, batch: int, seq_len: int,
                         lora: Optional[lora_lib.LoraConfig] = None) -> float:
  """Training FLOPs of a step: 2 per matmul parameter and token forward, 4 backward (the input's gradient and
  the weight's); a frozen base's weights get no gradient (2 backward), its adapters the full 6."""
  matmul_params = cfg.num_params() - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
  if lora is None:
    dense = 6 * matmul_params * batch * seq_len
  else:
    dense = (4 * matmul_params + 6 * lora_lib.adapter_count(cfg, lora)) * batch * seq_len
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


def random_frozen_base(s: step_lib.Setup, seed: int = 0) -> dict:
  """A random frozen base of a LoRA setup's shapes, each leaf made on its devices in its sharding: no host copy,
  and no float copy of a quantized base (the peak is the run's, not a loader's)."""
  flat_shapes, flat_shardings = (traverse_util.flatten_dict(t) for t in (s.frozen_shapes, s.frozen_shardings))
  out = {}
  for i, (path, struct) in enumerate(flat_shapes.items()):
    if struct.dtype in (jnp.int8, jnp.uint8):  # int8 values, or NF4 codes two to a byte
      make = lambda key, st=struct: jax.random.randint(key, st.shape, -127 if st.dtype == jnp.int8 else 0,
                                                       128 if st.dtype == jnp.int8 else 256, st.dtype)
    elif str(path[-1]).endswith(lora_lib.SCALE_SUFFIX):
      make = lambda key, st=struct: jnp.full(st.shape, 1e-4, st.dtype)  # weights of at most 0.0127 (int8)
    elif "norm" in "/".join(map(str, path)):
      make = lambda key, st=struct: jnp.ones(st.shape, st.dtype)
    else:
      make = lambda key, st=struct: (0.02 * jax.random.normal(key, st.shape)).astype(st.dtype)
    out[path] = jax.jit(make, out_shardings=flat_shardings[path])(jax.random.key(seed + i))
  return traverse_util.unflatten_dict(out)


def time_train_step(cfg: ModelConfig, mesh: jax.sharding.Mesh, rules: tuple, host_batch: dict, *, steps: int,
                    warmup: int, num_microbatches: int = 1, feed: Optional[Iterator[dict]] = None,
                    profile_top: int = 0,
                    lora: Optional[lora_lib.LoraConfig] = None) -> tuple[dict, step_lib.TrainState]:
  """Compiles the sharded train step for `host_batch`'s shape and times `steps` steps after `warmup`.

  Returns (the figures, the final train state). The state's memory is measured after init from the
  arrays themselves: per device, the bytes of its shards of the parameters and optimizer state.
  With `feed` (host-local batches of the same shape) it then times `steps` more steps that take their
  batches from it, as the trainer's loop does: the next batch is read while the step before runs.
  With `profile_top`, it then profiles a few steps (profile_ops) into result["profile"].
  With `lora`, the state holds the adapters, and a random frozen base of the model's shapes (quantized if lora
  says so) is passed to every step; its bytes are reported apart (frozen_bytes_*).
  """
  schedule = optimizers.make_schedule(steps + warmup)
  tx = optimizers.make_optimizer(schedule)
  batch_size, seq_len = host_batch["decoder_input_tokens"].shape
  s = step_lib.setup(cfg, mesh, rules, tx, seq_len=seq_len, lora=lora)
  compiled = step_lib.compile_train_step(s, tx, schedule, num_microbatches=num_microbatches)
  frozen = None if lora is None else random_frozen_base(s)
  step = lambda state, batch: compiled(state, batch, frozen)  # noqa: E731
  step.compiled_text = lambda state, batch: compiled.compiled_text(state, batch, frozen)
  state = s.init(jax.random.key(0))
  state_bytes, per_device = partitioning.sharded_bytes((state.params, state.opt_state))
  frozen_bytes, frozen_per_device = partitioning.sharded_bytes(frozen)
  batch = partitioning.to_global(host_batch, s.batch_sharding)

  compile_start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - compile_start
  for _ in range(warmup - 1):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  even_split = state_bytes / jax.device_count()
  result = {"compile_seconds": compile_seconds, "step_seconds_median": step_time, "step_seconds_min": min(times),
            "tokens_per_second": batch_size * seq_len / step_time, "final_loss": float(metrics["loss"]),
            "state_bytes_total": state_bytes, "state_bytes_even_split": even_split,
            "state_bytes_per_device_max": max(per_device.values()),
            "state_bytes_per_device_min": min(per_device.values()),
            "state_per_device_over_even_split": max(per_device.values()) / even_split,
            "trained_params": sum(x.size for x in jax.tree.leaves(state.params)),
            "frozen_bytes_total": frozen_bytes,
            "frozen_bytes_per_device_max": max(frozen_per_device.values(), default=0)}
  if feed is not None:
    start, previous = time.perf_counter(), None
    for _ in range(steps):  # waits for each step's metrics one step behind, as the trainer does
      state, metrics = step(state, partitioning.to_global(next(feed), s.batch_sharding))
      jax.block_until_ready(previous)
      previous = metrics
    jax.block_until_ready(metrics)
    result["fed_tokens_per_second"] = steps * batch_size * seq_len / (time.perf_counter() - start)
  if profile_top:
    result["profile"], state = profile_ops(step, state, batch, top=profile_top)
  return result, state


def profile_ops(step, state, batch, *, steps: int = 3, top: int = 15) -> tuple[dict, step_lib.TrainState]:
  """Where a step's time goes, from a jax.profiler trace of `steps` steps: (profile, final state).

  The profile has the op time per step in the forward pass, the backward pass and the rest (optimizer,
  loss scaling), and the `top` ops by time, each with its shape and the JAX operation it came from (the
  HLO's op_name). Op times are summed over the threads that run them, so they can exceed the step time.
  """
  hlo = {}  # HLO instruction name -> (shape, op_name)
  for line in step.compiled_text(state, batch).splitlines():
    if m := re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (.+?) [\w-]+\(", line):
      op_name = re.search(r'op_name="([^"]*)"', line)
      hlo.setdefault(m.group(1), (m.group(2), op_name.group(1) if op_name else ""))
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    data = jax.profiler.ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if str(stats.get("hlo_module", "")).startswith("jit_train_step") and "hlo_op" in stats:
          per_op[stats["hlo_op"]] += event.duration_ns / 1e6 / steps

  def phase(op_name: str) -> str:
    return "backward" if "transpose(jvp(" in op_name else "forward" if "jvp(" in op_name else "other"

  phases = collections.Counter()
  for name, ms in per_op.items():
    phases[phase(hlo.get(name, ("", ""))[1])] += ms
  ops = [{"op": name, "ms_per_step": ms, "shape": hlo.get(name, ("?", ""))[0],
          "source": hlo.get(name, ("", ""))[1].removeprefix("jit(train_step)/")}
         for name, ms in per_op.most_common(top)]
  return {"ms_per_step_by_phase": dict(phases), "ops_ms_per_step_summed": sum(per_op.values()), "top_ops": ops}, state


def print_profile(profile: dict) -> None:
  phases = profile["ms_per_step_by_phase"]
  print(f"\nop time per step: {profile['ops_ms_per_step_summed']:.1f} ms (" +
        ", ".join(f"{k} {v:.1f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])) + ")")
  for op in profile["top_ops"]:
    print(f"{op['ms_per_step']:9.2f} ms  {op['op'][:36]:36}  {op['shape'][:28]:28}  {op['source'][-70:]}")


def peak_memory_bytes() -> tuple[int, str]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host max RSS"


def gin_resolved(fn) -> dict:
  """The arguments `fn` gets once gin's bindings are applied: its defaults, overridden by the bindings."""
  defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
              if p.default is not inspect.Parameter.empty}
  return {**defaults, **gin.get_bindings(fn)}


def import_torch():
  """(torch, transformers), or a UserError saying to install them."""
  try:
    import torch
    import transformers
  except ImportError as e:
    raise UserError(f"--compare_torch needs torch and transformers ({e}); install them: "
                    "pip install torch transformers") from None
  return torch, transformers


def benchmark_torch(cfg: ModelConfig, tokens: np.ndarray, *, steps: int, warmup: int, threads: int) -> dict:
  """Median full train step (forward, backward, clip, AdamW step, zero_grad) of the same model in PyTorch."""
  # Only here: flan_jax.checkpoints imports TensorFlow and seqio (through flan_jax.text), which this script
  # otherwise runs without.
  from flan_jax.checkpoints import hf as hf_lib
  torch, transformers = import_torch()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  hf = hf_lib.hf_config(cfg, bos_id=None, eos_id=None, dtype="float32")
  hf.pop("architectures")
  hf.pop("torch_dtype")
  classes = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
             "mistral": transformers.MistralConfig}
  config = classes[hf.pop("model_type")](**hf)
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
  model.train()
  sched, opt = gin_resolved(optimizers.make_schedule), gin_resolved(optimizers.make_optimizer)
  if opt["name"] != "adamw":
    raise UserError(f"--compare_torch maps flan_jax's AdamW onto torch.optim.AdamW; make_optimizer.name is "
                    f"{opt['name']!r}")
  # optax.adamw and torch's AdamW both decay decoupled (p -= lr * weight_decay * p) on every parameter. The
  # learning rate is the peak; the schedule's warmup, if any, changes the values, not the cost of a step.
  optimizer = torch.optim.AdamW(model.parameters(), lr=sched["learning_rate"], betas=(opt["b1"], opt["b2"]),
                                eps=opt["eps"], weight_decay=opt["weight_decay"])
  input_ids = torch.from_numpy(tokens.astype(np.int64))
  attention_mask = torch.ones_like(input_ids)

  def train_step():
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids).loss
    loss.backward()
    if opt["clip_norm"]:
      torch.nn.utils.clip_grad_norm_(model.parameters(), opt["clip_norm"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().item()

  for _ in range(warmup):
    train_step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = train_step()
    times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  # parameters() yields a tied embedding/output matrix once, as ModelConfig.num_params counts it.
  return {"step_seconds_median": step_time, "step_seconds_min": min(times),
          "tokens_per_second": tokens.size / step_time, "threads": threads,
          "params": sum(p.numel() for p in model.parameters()), "dtype": "float32",
          "architecture": type(model).__name__, "attn_implementation": model.config._attn_implementation,
          "learning_rate": sched["learning_rate"], "betas": [opt["b1"], opt["b2"]], "eps": opt["eps"],
          "weight_decay": opt["weight_decay"], "clip_norm": opt["clip_norm"], "final_loss": loss,
          "torch_version": torch.__version__, "transformers_version": transformers.__version__}


GIN_FLAGS = ("--gin_file", "--gin_search_paths")


def split_gin_flags(argv, default_gin_file: str = "models/tiny.gin") -> tuple[list[str], list[str]]:
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
    gin_args.insert(0, f"--gin_file={default_gin_file}")
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
  parser.add_argument("--compare_torch", action="store_true",
                      help="also time the same model in PyTorch (transformers) and report the ratio")
  parser.add_argument("--torch_threads", type=int, default=None, help="torch.set_num_threads; default: os.cpu_count()")
  parser.add_argument("--profile_top", type=int, default=0,
                      help="also trace a few steps and print this many of the most expensive XLA ops")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="also time LoRA adapters of this rank on a float, an int8 and an NF4 frozen base, beside "
                           "full fine-tuning, each in its own process")
  parser.add_argument("--variant", choices=VARIANTS, default=None, help=argparse.SUPPRESS)  # one of --lora_rank's
  argv = sys.argv[1:] if argv is None else list(argv)
  gin_args, rest = split_gin_flags(argv)
  args = parser.parse_args(rest)
  if args.lora_rank < 0:
    raise UserError(f"--lora_rank={args.lora_rank}; give a positive rank (or 0 for full fine-tuning alone)")
  if args.lora_rank and args.compare_torch:
    raise UserError("--compare_torch times full fine-tuning in PyTorch; run it without --lora_rank")
  if args.compare_torch:
    import_torch()  # fail before the flan_jax measurement

  cli.configure_gin(cli.parse_flags(gin_args))
  cfg = ModelConfig()
  if args.lora_rank and args.variant is None:
    lora_lib.check(lora_lib.LoraConfig(rank=args.lora_rank), cfg)  # before any child starts
    return compare_lora(cfg, args, argv)
  lora = None
  if args.variant not in (None, "full"):
    lora = lora_lib.LoraConfig(rank=args.lora_rank, base_quantization=VARIANTS[args.variant])  # checked in setup
  mesh = partitioning.make_mesh()
  host_batch = synthetic_batch(args.batch_size, args.seq_len, min(cfg.vocab_size, 32000), True)
  timed, state = time_train_step(cfg, mesh, partitioning.axis_rules(), host_batch, steps=args.steps,
                                 warmup=args.warmup, num_microbatches=args.num_microbatches,
                                 profile_top=args.profile_top, lora=lora)

  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  size = args.matmul_size or (2048 if on_cpu else 8192)
  peak = measure_peak_flops(cfg.dtype, size)
  step_time = timed["step_seconds_median"]
  flops = model_flops_per_step(cfg, args.batch_size, args.seq_len, lora)
  memory, memory_kind = peak_memory_bytes()
  result = {
      "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "num_devices": jax.device_count(),
      "host_machine": platform.machine(), "mesh": dict(mesh.shape),
      "params": cfg.num_params(), "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
      "remat_policy": cfg.remat_policy, "attention": cfg.attention, "scan_layers": cfg.scan_layers,
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "batch_size": args.batch_size, "seq_len": args.seq_len,
      "num_microbatches": args.num_microbatches, "steps_timed": args.steps,
      "compile_seconds": timed["compile_seconds"], "step_seconds_median": step_time,
      "step_seconds_min": timed["step_seconds_min"], "tokens_per_second": timed["tokens_per_second"],
      "model_flops_per_step": flops, "matmul_size": size, "peak_flops_per_device_measured": peak,
      "mfu": flops / step_time / (peak * jax.device_count()),
      "peak_memory_bytes": memory, "peak_memory_kind": memory_kind, "final_loss": timed["final_loss"],
      **{k: v for k, v in timed.items() if k.startswith(("state_", "frozen_", "trained_")) or k == "profile"},
      "lora": None if lora is None else lora.record(),
      "computed_bytes": lora_lib.train_state_bytes(cfg, lora),
  }
  rows = [("device", f"{result['device']} x{result['num_devices']}"), ("mesh", str(result["mesh"])),
          ("parameters", f"{result['params']:,}"), ("dtype", f"{cfg.dtype} (params {cfg.param_dtype})"),
          ("layers / attention", f"{'scan' if cfg.scan_layers else 'unrolled'} / {cfg.attention}"),
          ("batch x seq", f"{args.batch_size} x {args.seq_len}"), ("compile", f"{timed['compile_seconds']:.1f} s"),
          ("step time (median)", f"{step_time * 1e3:.1f} ms"), ("tokens/s", f"{result['tokens_per_second']:,.0f}"),
          ("model TFLOP/step", f"{flops / 1e12:.3f}"),
          ("measured peak / device", f"{peak / 1e12:.2f} TFLOP/s ({size}^2 {cfg.dtype} matmul)"),
          ("MFU", f"{100 * result['mfu']:.1f}%"), ("peak memory", f"{memory / 2**30:.2f} GiB ({memory_kind})"),
          ("params + opt state / device", f"{timed['state_bytes_per_device_max'] / 2**20:.2f} MiB at most "
           f"(total {timed['state_bytes_total'] / 2**20:.2f} MiB / {jax.device_count()} = "
           f"{timed['state_bytes_even_split'] / 2**20:.2f} MiB; x{timed['state_per_device_over_even_split']:.3f})")]
  if lora is not None:
    rows += [("LoRA", f"rank {lora.rank} on {', '.join(lora.targets)}; {timed['trained_params']:,} trained parameters"),
             ("frozen base / device", f"{timed['frozen_bytes_per_device_max'] / 2**20:.2f} MiB at most "
              f"({lora.base_quantization + ' + ' if lora.quantized else ''}{lora.base_dtype or cfg.param_dtype}; total "
              f"{timed['frozen_bytes_total'] / 2**20:.2f} MiB)")]
  if on_cpu and sys.platform == "linux":  # docs/models.md, "Speed on CPU"
    rows.append(("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES") or "unset (glibc.malloc.hugetlb=1 is faster)"))
  if args.compare_torch:
    flan_jax_params = sum(x.size for x in jax.tree.leaves(state.params))
    del state
    threads = args.torch_threads or os.cpu_count()
    torch_result = benchmark_torch(cfg, host_batch["decoder_input_tokens"], steps=args.steps, warmup=args.warmup,
                                   threads=threads)
    # Both count a tied embedding once (ModelConfig.num_params and torch's parameters() alike).
    assert flan_jax_params == cfg.num_params() == torch_result["params"], (
        f"parameter counts differ: flan_jax {flan_jax_params:,} (config {cfg.num_params():,}), "
        f"PyTorch {torch_result['params']:,}")
    result["params_flan_jax"] = flan_jax_params
    result["torch"] = torch_result
    result["ratio_vs_torch"] = result["tokens_per_second"] / torch_result["tokens_per_second"]
    rows += [("PyTorch step (median)", f"{torch_result['step_seconds_median'] * 1e3:.1f} ms "
              f"({torch_result['architecture']}, float32, {threads} threads)"),
             ("PyTorch tokens/s", f"{torch_result['tokens_per_second']:,.0f}"),
             ("PyTorch parameters", f"{torch_result['params']:,}"),
             ("flan_jax / PyTorch", f"{result['ratio_vs_torch']:.2f}x tokens/s")]
  report(rows, result, args.output)
  if "profile" in result:
    print_profile(result["profile"])
  return result


# --variant -> LoraConfig.base_quantization (None: full fine-tuning)
VARIANTS = {"full": None, "lora": "none", "lora_int8": "int8", "lora_nf4": "nf4"}
VARIANT_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "lora_int8": "LoRA, int8 base",
                 "lora_nf4": "LoRA, NF4 base"}


def compare_lora(cfg: ModelConfig, args, argv: list) -> dict:
  """Runs this script once per variant, each in a process of its own (so that each peak memory is its own,
  and this process never starts a backend), and prints them side by side with the computed bytes."""
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for variant in VARIANTS:
      output = os.path.join(tmp, f"{variant}.json")
      child = [a for a in argv if a.partition("=")[0] != "--output"] + [f"--variant={variant}", f"--output={output}"]
      done = subprocess.run([sys.executable, os.path.abspath(__file__), *child], stdout=subprocess.PIPE, text=True)
      if done.returncode == 2:  # a setting the child refused, in one line on stderr already
        raise SystemExit(2)
      if done.returncode:
        print(done.stdout, end="")
        raise UserError(f"the {VARIANT_NAMES[variant]} run exited with {done.returncode} (its output is above)")
      with open(output) as f:
        results[variant] = json.load(f)
  mib = lambda b: f"{b / 2**20:,.1f} MiB"  # noqa: E731
  model_parallel = lambda r: r["mesh"]["fsdp"] * r["mesh"]["tensor"]  # noqa: E731 (the data axis holds copies)
  full = results["full"]
  lines = [("", [VARIANT_NAMES[v] for v in VARIANTS])]
  per_variant = lambda fn: [fn(results[v]) for v in VARIANTS]  # noqa: E731
  lines += [
      ("trained parameters", per_variant(lambda r: f"{r['trained_params']:,}")),
      ("params + opt state / device", per_variant(lambda r: mib(r["state_bytes_per_device_max"]))),
      ("  computed, split evenly", per_variant(
          lambda r: mib((r["computed_bytes"]["params"] + r["computed_bytes"]["opt_state"]) / model_parallel(r)))),
      ("frozen base / device", per_variant(lambda r: mib(r["frozen_bytes_per_device_max"]))),
      ("  computed, split evenly", per_variant(lambda r: mib(r["computed_bytes"]["base"] / model_parallel(r)))),
      ("weights+grads+opt, whole model", per_variant(lambda r: mib(r["computed_bytes"]["total"]))),
      ("peak memory", per_variant(lambda r: mib(r["peak_memory_bytes"]))),
      ("step time (median)", per_variant(lambda r: f"{r['step_seconds_median'] * 1e3:,.1f} ms")),
      ("tokens/s", per_variant(lambda r: f"{r['tokens_per_second']:,.0f}")),
      ("tokens/s over full", per_variant(lambda r: f"{r['tokens_per_second'] / full['tokens_per_second']:.2f}x")),
      ("peak memory over full", per_variant(lambda r: f"{r['peak_memory_bytes'] / full['peak_memory_bytes']:.2f}x")),
  ]
  print(f"{cfg.num_params():,} parameters, {full['device']} x{full['num_devices']}, mesh {full['mesh']}, batch "
        f"{args.batch_size} x {args.seq_len}; LoRA rank {args.lora_rank}; peak memory: {full['peak_memory_kind']}; "
        "split evenly: over fsdp x tensor")
  width = max(len(name) for name, _ in lines)
  cols = [max(len(cells[i]) for _, cells in lines) for i in range(len(VARIANTS))]
  for name, cells in lines:
    print(f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols)))
  combined = {"lora_rank": args.lora_rank, "variants": results}
  with open(args.output, "w") as f:
    json.dump(combined, f, indent=2)
  print(f"wrote {args.output}")
  return combined


def report(rows: list, result: dict, output: str) -> dict:
  """Prints the (name, value) rows as a table and writes `result` as JSON to `output`."""
  width = max(len(k) for k, _ in rows)
  print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {output}")
  return result


def run_main(main) -> None:
  """Runs a benchmark's main; a UserError is one line on stderr and exit code 2."""
  try:
    main()
  except UserError as e:
    print(f"error: {first_line(e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run_main(main)
