"""Benchmark the input pipeline against the trainer: the packed seqio batches' tokens/s over the train step's.

    python scripts/benchmark_pipeline.py  # the demo: embedded_no_sentiment, models/mini.gin, 16 x (128 + 32)
    python scripts/benchmark_pipeline.py --mixture=flan_no_sentiment --mock_tfds  # FLAN, on mock TFDS data

Pipeline: `data.get_dataset(..., with_task_index=True)` read through `data.InputIterator`, each batch
counted by `accounting.Tally` (the host work the trainer does per batch); after --warmup_batches,
--batches batches are timed. Trainer: the compiled train step (benchmark_train.time_train_step) on one
of those batches, then fed by the same pipeline as in the trainer's loop. Tokens are batch x
(inputs + targets) for both, padding included (the step computes on it). The ratio, pipeline over
trainer, says how far the pipeline is ahead. Gin flags as in benchmark_train.py (default
models/mini.gin). Prints a table and writes the figures as JSON (--output).
"""

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(SCRIPTS))
sys.path.insert(0, SCRIPTS)

import jax  # noqa: E402

from flan_jax import cli, startup  # noqa: E402

startup.import_tensorflow_quietly()

import benchmark_train  # noqa: E402

from flan_jax.data import accounting  # noqa: E402
from flan_jax.data import pipeline as data_lib  # noqa: E402
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig  # noqa: E402
import flan_tasks  # noqa: E402,F401  (registers the collections)


def mock_tfds(num_examples: int):
  """TFDS reads replaced by random examples of each dataset's features (no downloads), as the tests do."""
  import tensorflow_datasets as tfds
  return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def time_pipeline(inputs: data_lib.InputIterator, tally: accounting.Tally, *, batches: int,
                  warmup: int) -> tuple[dict, dict]:
  """(The figures: seconds to the first batch, then tokens/s over `batches` batches read after `warmup`
  more; the first batch, without its task index, as the model gets it)."""
  start = time.perf_counter()
  batch = tally.count(next(inputs))
  first = time.perf_counter() - start
  for _ in range(warmup):
    tally.count(next(inputs))
  start = time.perf_counter()
  for _ in range(batches):
    tally.count(next(inputs))
  seconds = time.perf_counter() - start
  rows, seq_len = batch["decoder_input_tokens"].shape
  return {"first_batch_seconds": first, "warmup_batches": warmup, "batches_timed": batches, "seconds": seconds,
          "tokens_per_second": batches * rows * seq_len / seconds,
          "packing_efficiency": tally.summary(0)["totals"]["packing_efficiency"]}, batch


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      epilog="gin: --gin_file=PATH (repeatable; default models/mini.gin), --gin.NAME=VALUE, --gin_search_paths=DIR,DIR")
  parser.add_argument("--mixture", default="embedded_no_sentiment")
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--targets", type=int, default=32)
  parser.add_argument("--batches", type=int, default=100, help="pipeline batches timed")
  parser.add_argument("--warmup_batches", type=int, default=20)
  parser.add_argument("--steps", type=int, default=20, help="train steps timed (on one batch, then fed)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--mock_tfds", action="store_true", help="read TFDS datasets as random mock examples")
  parser.add_argument("--mock_examples", type=int, default=64, help="examples per split with --mock_tfds")
  parser.add_argument("--output", default="benchmark_pipeline.json")
  gin_args, rest = benchmark_train.split_gin_flags(sys.argv[1:] if argv is None else argv, "models/mini.gin")
  args = parser.parse_args(rest)
  logging.getLogger("absl").setLevel(logging.ERROR)  # seqio warns once per task that it is uncached
  cli.configure_gin(cli.parse_flags(gin_args))
  cfg = ModelConfig()
  mesh = partitioning.make_mesh()
  lengths = {"inputs": args.inputs, "targets": args.targets}

  with contextlib.ExitStack() as stack:
    if args.mock_tfds:
      stack.enter_context(mock_tfds(args.mock_examples))
    directory = stack.enter_context(tempfile.TemporaryDirectory())  # InputIterator's; nothing is saved
    dataset = data_lib.get_dataset(args.mixture, lengths, "train", args.batch_size, with_task_index=True)
    inputs, tally = data_lib.InputIterator(dataset, directory), accounting.Tally(args.mixture)
    pipeline, batch = time_pipeline(inputs, tally, batches=args.batches, warmup=args.warmup_batches)
    trainer, _ = benchmark_train.time_train_step(cfg, mesh, partitioning.axis_rules(), batch, steps=args.steps,
                                                 warmup=args.warmup, feed=(tally.count(b) for b in inputs))

  device = jax.devices()[0]
  ratio = pipeline["tokens_per_second"] / trainer["tokens_per_second"]
  result = {"mixture": args.mixture, "mock_tfds": args.mock_tfds, "lengths": lengths, "batch_size": args.batch_size,
            "device": f"{device.platform}:{getattr(device, 'device_kind', '')}", "num_devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "mesh": dict(mesh.shape), "params": cfg.num_params(),
            "pipeline": pipeline, "trainer": trainer, "ratio": ratio}
  rows = [("mixture", args.mixture + (f" (mock TFDS, {args.mock_examples} examples a split)" if args.mock_tfds
                                      else "")),
          ("device", f"{result['device']} x{result['num_devices']} ({os.cpu_count()} CPUs), mesh {result['mesh']}"),
          ("model", f"{cfg.num_params():,} parameters"),
          ("batch", f"{args.batch_size} x ({args.inputs} + {args.targets}) tokens"),
          ("pipeline first batch", f"{pipeline['first_batch_seconds']:.1f} s"),
          ("pipeline tokens/s", f"{pipeline['tokens_per_second']:,.0f} ({args.batches} batches; packing efficiency "
           f"{100 * pipeline['packing_efficiency']:.0f}%)"),
          ("train step tokens/s", f"{trainer['tokens_per_second']:,.0f} (median of {args.steps} steps, "
           f"{trainer['step_seconds_median'] * 1e3:.1f} ms)"),
          ("pipeline / train step", f"{ratio:.1f}x"),
          ("step fed by pipeline", f"{trainer['fed_tokens_per_second']:,.0f} tokens/s "
           f"({trainer['fed_tokens_per_second'] / trainer['tokens_per_second']:.2f} of the step alone)")]
  return benchmark_train.report(rows, result, args.output)


if __name__ == "__main__":
  benchmark_train.run_main(main)
