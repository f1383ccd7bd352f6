"""Input pipeline: a seqio Task or Mixture -> packed decoder features -> global sharded jax.Arrays.

Each process reads its own shard of the data (seqio.ShardInfo) and contributes its rows of every
global batch; `jax.make_array_from_process_local_data` stitches them into one array on the mesh.
`InputIterator` saves and restores the pipeline's exact position (tf.data iterator checkpoints), so
a resumed run continues without re-reading the batches it has already trained on.
"""

import difflib
import os
import shutil
from typing import Mapping, Optional

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


class InputIterator:
  """This process's batches of a tf.data pipeline, with a position that can be saved and restored.

  The position of step N is written to `directory/process_<i>/<N>` (a tf.train.Checkpoint of the
  iterator: shuffle buffers, packing state and prefetched batches included), into a temporary
  directory renamed when complete. Restoring it continues with exactly the batch an uninterrupted
  run would read next, in time that does not grow with N.
  """

  def __init__(self, ds: tf.data.Dataset, directory: str):
    options = tf.data.Options()
    # Tokenizers that run as py_functions hold no state the position depends on.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    self._iterator = iter(ds.with_options(options))
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self.directory = os.path.join(directory, f"process_{jax.process_index()}")

  def __iter__(self) -> "InputIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def save(self, step: int, keep: Optional[set] = None) -> None:
    """Writes the position after `step` batches; removes the positions of steps not in `keep`
    and any earlier write that was cut short."""
    final = os.path.join(self.directory, str(step))
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    self._checkpoint.write(os.path.join(tmp, "position"))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for name in os.listdir(self.directory):  # positions of dropped steps, and writes cut short
      if ".tmp-" in name or (keep is not None and name.isdigit() and int(name) not in keep | {step}):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def restore(self, step: int) -> bool:
    """Moves to the saved position of `step`; False if there is none (then nothing changes)."""
    path = os.path.join(self.directory, str(step), "position")
    if not tf.io.gfile.exists(path + ".index"):
      return False
    self._checkpoint.read(path).assert_consumed()
    return True
