"""The eval's device work: seqio's enumerated eval datasets through a jitted function, in length buckets.

Each global batch is cut to the positions its rows use, rounded up to a bucket (`decoding.bucket`: 16, 24, 32,
48, 64, ..., capped at the configured TASK_FEATURE_LENGTHS), not padded to the configured length: the configured
length is a ceiling, not a cost, and one program is compiled per bucket (a handful), each reused for every
checkpoint. A row's result does not depend on the cut: the positions after its last token are padding, which
neither scoring nor decoding reads (both attend causally or within the prompt), so the numbers match a run padded
to the configured length to float tolerance.

Scoring cuts at the last non-padding position of any feature; decoding at the longest prompt, the only part of a
row the decoder reads (it writes its continuation into a KV cache of its own). The decode length stays the
configured targets length: a prediction can be longer than its target, and the decode loop already stops as
soon as every row of the batch has ended. Scoring rows run in order of length, so rows of like length share a
batch (a row's score depends on nothing else in its batch); decoding keeps the dataset's order, as a sampled
row's draw depends on its place in the batch. Results come back in the order given either way.
"""

from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from flan_jax.model import decoding, partitioning


def used_lengths(features: Mapping[str, np.ndarray]) -> np.ndarray:
  """[rows] each row's length up to its last non-padding position (nonzero in any feature): what scoring reads."""
  used = np.zeros(len(next(iter(features.values()))), np.int64)
  for v in features.values():
    if v.ndim == 2:
      nonzero = v != 0
      used = np.maximum(used, np.where(nonzero.any(axis=1), v.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 0))
  return used


def prompt_lengths(features: Mapping[str, np.ndarray]) -> np.ndarray:
  """[rows] each row's prompt (its prefix mask's positions, BOS included): all of a row that decoding reads."""
  return np.sum(features["decoder_causal_attention"] != 0, axis=1)


class BatchRunner:
  """Feeds an enumerated eval dataset through a jitted function in fixed-size global batches, cut to buckets.

  `reads` gives the positions of each row the function reads (`used_lengths` for scoring, `prompt_lengths` for
  decoding); `sort` runs rows in order of that length (for a function whose rows do not depend on their place in
  the batch). `bucketed=False` pads every batch to the configured length in the dataset's order, as the eval
  did before buckets: for the benchmark (scripts/benchmark_eval.py) and the tests that compare the two.

  Compiled once per bucket and reused for every checkpoint: set `params` (and `progress`) before a call.
  Every process reads the same batches, so each computes the same bucket from the whole global batch; each
  device receives only its own rows (its block of the batch sharding), and the outputs come back replicated to
  every process.
  """

  def __init__(self, fn, mesh, rules, batch_size: int, *, reads: Callable = used_lengths, sort: bool = False,
               bucketed: bool = True):
    self.mesh, self.rules, self.batch_size = mesh, rules, batch_size
    self.reads, self.sort, self.bucketed = reads, sort, bucketed
    self.sharding = partitioning.batch_sharding(mesh, rules)
    self.fn = jax.jit(fn, out_shardings=partitioning.replicated(mesh))
    self.params, self.progress = None, None

  def __call__(self, ds) -> list[tuple[int, Any]]:
    """(index, output) of each example of seqio's enumerated dataset `ds` (seqio orders them by index). The task's
    rows are read whole first, to be run in order of length."""
    if self.progress:
      self.progress.start_task()
    chunks = list(ds.batch(max(self.batch_size, 1024)).as_numpy_iterator())
    if not chunks:
      return []
    indices = np.concatenate([i for i, _ in chunks])
    features = {k: np.concatenate([f[k] for _, f in chunks]) for k in chunks[0][1]}
    return list(zip(indices.tolist(), self.run_rows(features, self.progress)))

  def run_rows(self, features: Mapping[str, np.ndarray], progress: Optional[Any] = None) -> list:
    """The function's output for each row of `features` (any number of rows), in their order; `progress`
    (evaluator's) counts the rows of each batch as it comes back."""
    n = len(next(iter(features.values())))
    lengths = self.reads(features)
    order = np.argsort(lengths, kind="stable") if self.bucketed and self.sort else np.arange(n)
    out: list = [None] * n
    for start in range(0, n, self.batch_size):
      rows = order[start:start + self.batch_size]
      batch = {k: self._to_global(_pad(self._cut(v[rows], int(lengths[rows].max())), self.batch_size))
               for k, v in features.items()}
      with partitioning.activate(self.mesh, self.rules):
        outputs = np.asarray(self.fn(self.params, batch))
      for i, output in zip(rows, outputs):
        out[i] = output
      if progress:
        progress.add(len(rows))
    return out

  def _cut(self, rows: np.ndarray, longest: int) -> np.ndarray:
    """The batch's rows up to its bucket (all of them unbucketed); a feature without a length axis whole."""
    if not self.bucketed or rows.ndim < 2:
      return rows
    return rows[:, :decoding.bucket(longest, rows.shape[1])]

  def _to_global(self, rows: np.ndarray) -> jax.Array:
    # The callback runs for this process's devices only: each receives its slice of the rows.
    return jax.make_array_from_callback(rows.shape, self.sharding, lambda idx: rows[idx])


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
  if len(rows) >= size:
    return rows
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)])
