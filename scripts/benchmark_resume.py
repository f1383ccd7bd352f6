"""Benchmark: how long a resumed run takes to reach its first batch, by saved input position or by skipping.

    python scripts/benchmark_resume.py [--task=embedded_no_sentiment] [--steps=10,100,400] [--output=FILE]

For each step S it reads S batches and saves the input position (not timed), then times, each in
a new pipeline: restoring the position and reading the next batch, and skipping S batches and
reading the next one (what a resume costs without a saved position). Both give the same batch.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from flan_jax import startup  # noqa: E402

startup.import_tensorflow_quietly()

from flan_jax.data import pipeline as data_lib  # noqa: E402
import flan_tasks  # noqa: E402,F401  (registers the collections)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="embedded_no_sentiment")
  parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 400])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--inputs", type=int, default=128)
  parser.add_argument("--targets", type=int, default=32)
  parser.add_argument("--output", default="benchmark_resume.json")
  args = parser.parse_args(argv)
  lengths = {"inputs": args.inputs, "targets": args.targets}
  dataset = lambda skip=0: data_lib.get_dataset(args.task, lengths, "train", args.batch_size, skip_batches=skip)

  rows = []
  with tempfile.TemporaryDirectory() as directory:
    for step in args.steps:
      inputs = data_lib.InputIterator(dataset(), directory)
      for _ in range(step):
        next(inputs)
      inputs.save(step)
      began = time.perf_counter()
      restored = data_lib.InputIterator(dataset(), directory)
      assert restored.restore(step)
      by_position = next(restored)
      position_seconds = time.perf_counter() - began
      began = time.perf_counter()
      by_skipping = next(data_lib.InputIterator(dataset(skip=step), directory))
      skip_seconds = time.perf_counter() - began
      same = all(np.array_equal(by_position[k], by_skipping[k]) for k in by_position)
      rows.append({"step": step, "restore_position_seconds": position_seconds, "skip_seconds": skip_seconds,
                   "same_batch": same})

  print(f"{args.task}, batch {args.batch_size} x {args.inputs + args.targets} tokens: seconds to the first "
        "batch of a resumed run")
  print(f"{'step':>6} {'saved position':>15} {'skip batches':>13} {'same batch':>11}")
  for r in rows:
    print(f"{r['step']:>6} {r['restore_position_seconds']:>15.2f} {r['skip_seconds']:>13.2f} "
          f"{str(r['same_batch']):>11}")
  with open(args.output, "w") as f:
    json.dump({"task": args.task, "batch_size": args.batch_size, "lengths": lengths, "results": rows}, f, indent=2)
  print(f"wrote {args.output}")
  return rows


if __name__ == "__main__":
  main()
