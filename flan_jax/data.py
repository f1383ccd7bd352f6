"""Input pipeline: a seqio Task or Mixture -> packed decoder features -> global sharded jax.Arrays.

Each process reads its own shard of the data (seqio.ShardInfo) and contributes its rows of every
global batch; `jax.make_array_from_process_local_data` stitches them into one array on the mesh.
"""

import difflib
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import vocabularies
from flan_jax.errors import UserError

Batch = dict[str, np.ndarray]


def check_task_name(name: str) -> None:
  """Raises UserError for a name that is neither a registered Task nor a Mixture."""
  if not name:
    raise UserError("MIXTURE_OR_TASK_NAME is not set: pass --gin.MIXTURE_OR_TASK_NAME=NAME "
                    "(`python -m flan_tasks` lists the names)")
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in known:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UserError(f"unknown task or mixture '{name}'{hint}; `python -m flan_tasks` lists the "
                    "registered names, and a task module of your own must be imported by a gin file")


def vocabulary(name: str) -> seqio.Vocabulary:
  """The targets vocabulary of a registered Task or Mixture (the run's choice for our tasks)."""
  vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  return vocab.resolve() if isinstance(vocab, vocabularies.RunVocabulary) else vocab


def feature_converter(pack: bool, vocab: seqio.Vocabulary) -> seqio.FeatureConverter:
  """Loss on the targets only; PrefixLM features when the task has `inputs`.

  Every example's decoder input starts with the vocabulary's BOS id (0 for the byte vocabulary),
  as a pretrained Llama-family model expects.
  """
  return seqio.DecoderFeatureConverter(pack=pack, loss_on_targets_only=True,
                                       bos_id=vocabularies.bos_id_or_zero(vocab))


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                global_batch_size: int, *, shuffle: bool = True, seed: int = 0, pack: bool = True,
                num_epochs: int | None = None, skip_batches: int = 0,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
  """This process's share of every global batch, as a tf.data pipeline of numpy-able dicts.

  Process i of n reads shard i of n and gives rows [i * B/n, (i + 1) * B/n) of each global batch
  of B rows. `shard=(i, n)` overrides the process index and count (to replay a multi-host run's
  data on one host). The pipeline is deterministic given the seed, so skipping `skip_batches`
  batches resumes a run exactly where a previous one stopped.
  """
  check_task_name(mixture_or_task_name)
  index, num_processes = shard or (jax.process_index(), jax.process_count())
  if global_batch_size % num_processes:
    raise UserError(f"BATCH_SIZE={global_batch_size} is not divisible by the {num_processes} processes")
  ds = seqio.get_dataset(
      mixture_or_task_name,
      task_feature_lengths=dict(task_feature_lengths),
      dataset_split=split,
      shuffle=shuffle,
      num_epochs=num_epochs,
      feature_converter=feature_converter(pack, vocabulary(mixture_or_task_name)),
      shard_info=seqio.ShardInfo(index, num_processes),
      seed=seed,
      use_cached=False,
  )
  ds = ds.batch(global_batch_size // num_processes, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


def to_global(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Host-local rows -> global arrays whose batch dimension is split over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def global_batches(ds: tf.data.Dataset, sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  for local in ds.as_numpy_iterator():
    yield to_global(local, sharding)
