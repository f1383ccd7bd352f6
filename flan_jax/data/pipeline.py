"""Input pipeline: a seqio Task or Mixture -> packed decoder features -> global sharded jax.Arrays.

Each process reads its own shard of the data (seqio.ShardInfo) and contributes its rows of every
global batch; `jax.make_array_from_process_local_data` stitches them into one array on the mesh.
`InputIterator` saves and restores the pipeline's exact position (tf.data iterator checkpoints), so
a resumed run continues without re-reading the batches it has already trained on.
On request every batch also carries `task_index`, the task of each token (see `get_dataset`).
Where TFDS-backed tasks (the flan_* collection) find their prepared data is `tfds_data_dir` (gin: TFDS_DATA_DIR).
"""

import copy
import difflib
import json
import os
import shutil
import tempfile
from typing import Mapping, Optional

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import storage
from flan_jax.errors import UserError
from flan_jax.text import formats, tokenizers

Batch = dict[str, np.ndarray]
TASK_INDEX = "task_index"  # the index in `task_names` of each token's task; -1 on padding


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


@gin.configurable("tfds_data_dir")
def use_tfds_data_dir(path: Optional[str] = None) -> Optional[str]:
  """Makes every TFDS-backed task read (and prepare) its data in `path`; returns it.

  None keeps TFDS's own choice: $TFDS_DATA_DIR, else ~/tensorflow_datasets. A bucket path (gs://) is read
  by TensorFlow's own GCS client. Gin binds it as `tfds_data_dir.path = %TFDS_DATA_DIR` (gin/runs/finetune.gin,
  gin/runs/eval.gin); training (`get_dataset`), eval and a study's contamination check call it before
  they read data. It is set on each registered task's source as well as seqio's process-wide override,
  because a source keeps the override it saw first: a later job of the same process with another
  TFDS_DATA_DIR, or none, would otherwise still read the first one's.
  """
  if path is not None:
    if not isinstance(path, str) or not path:
      raise UserError(f"TFDS_DATA_DIR={path!r}: pass a folder of prepared TFDS datasets, e.g. "
                      "--gin.TFDS_DATA_DIR=/data/tensorflow_datasets, or None for TFDS's default")
    path = storage.check(path, "TFDS_DATA_DIR")
    found = storage.scheme(path)
    if found and found not in tf.io.gfile.get_registered_schemes():
      raise UserError(f"TFDS_DATA_DIR={path!r}: TFDS reads through TensorFlow's file systems, which cannot read "
                      f"{found}:// here; copy the data to a local folder or gs://bucket/path")
    path = path if found else storage.absolute(os.path.expanduser(path))
  seqio.set_tfds_data_dir_override(path)
  for name in list(seqio.TaskRegistry.names()):
    source = seqio.TaskRegistry.get(name).source
    if isinstance(source, seqio.TfdsDataSource):
      source.tfds_dataset.override_data_dir(path)
  return path


def vocabulary(name: str) -> seqio.Vocabulary:
  """The targets vocabulary of a registered Task or Mixture (the run's choice for our tasks)."""
  vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  return tokenizers.concrete(vocab)


def feature_converter(pack: bool, vocab: seqio.Vocabulary, with_task_index: bool = False) -> seqio.FeatureConverter:
  """Loss on the targets only; PrefixLM features (the prompt is `inputs`).

  Every example's decoder input starts where `formats.decoder_start` says for the vocabulary and
  the run's format: at BOS for a tokenizer that adds it, else at the prompt's own first token
  (the byte vocabulary at 0). `with_task_index` keeps TASK_INDEX.
  """
  name = formats.example_format()
  return DecoderConverter(pack=pack, start_id=formats.decoder_start(vocab, name),
                          empty_start_id=formats.empty_prompt_start(vocab), with_task_index=with_task_index)


_START = "decoder_start"  # per token, 1 + the token its example's stream starts with (0 on padding)


class DecoderConverter(seqio.PrefixLMFeatureConverter):
  """seqio's PrefixLM features (loss on targets only), with the stream's start token chosen.

  `start_id` is the token put before every example (seqio's `bos_id`), or None: the example's
  first prompt token starts it (an empty prompt starts at `empty_start_id`), as a decoder reads a
  text that its tokenizer gives no BOS. `with_task_index` adds TASK_INDEX packed along with the
  tokens: seqio refuses pass-through features when packing, as one of its own length could pack
  differently, so both extra features are built from the concatenated tokens (nonzero wherever a
  token is, which is what packing measures); the examples pack exactly as without them.
  """

  def __init__(self, *, start_id: Optional[int], empty_start_id: int = 0, with_task_index: bool = False,
               pack: bool = True):
    super().__init__(pack=pack, loss_on_targets_only=True, bos_id=0 if start_id is None else start_id)
    self._from_prompt, self._empty_start_id = start_id is None, empty_start_id
    if with_task_index:
      self._passthrough_features = {TASK_INDEX: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}

  def _concat_and_add_masks(self, features):
    features = dict(features)
    if self._from_prompt:
      inputs = features["inputs"]
      first = tf.cond(tf.size(inputs) > 0, lambda: inputs[0], lambda: tf.constant(self._empty_start_id, tf.int32))
      features["inputs"] = inputs[1:]
    d = dict(super()._concat_and_add_masks(features))
    if self._from_prompt:
      d[_START] = tf.where(d["targets"] != 0, first + 1, 0)
    if TASK_INDEX in self._passthrough_features:
      d[TASK_INDEX] = tf.where(d["targets"] != 0, features[TASK_INDEX][0] + 1, 0)
    return d

  def _concat_task_feature_lengths(self, task_feature_lengths):
    lengths = dict(super()._concat_task_feature_lengths(task_feature_lengths))
    if self._from_prompt:
      lengths[_START] = lengths["targets"]
    return lengths

  def _convert_example(self, features):
    d = dict(super()._convert_example(features))
    if self._from_prompt:
      positions = features["targets_positions"] if self.pack else tf.range(tf.size(features["targets"]))
      start = features[_START]
      d["decoder_input_tokens"] = tf.where((positions == 0) & (start > 0), start - 1, d["decoder_input_tokens"])
    if TASK_INDEX in self._passthrough_features:
      d[TASK_INDEX] = features[TASK_INDEX] - 1
    return d


def task_names(mixture_or_task_name: str) -> list[str]:
  """The tasks whose positions in this list TASK_INDEX gives: a mixture's tasks (sub-mixtures
  flattened, sorted by name, as seqio lists them), or the task itself."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  return [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [provider.name]


def _examples_with_task_index(name: str, lengths: Mapping[str, int], **kwargs) -> tf.data.Dataset:
  """The examples of a Task or Mixture as seqio mixes them, each tagged with its task's index."""
  tag = lambda ds, i: ds.map(lambda ex: {**ex, TASK_INDEX: tf.constant([i], tf.int32)})
  provider = seqio.get_mixture_or_task(name)
  if not isinstance(provider, seqio.Mixture):
    return tag(provider.get_dataset(lengths, **kwargs), 0)
  index = {task: i for i, task in enumerate(task_names(name))}
  tagged = copy.copy(provider)  # the same tasks, rates and sampling; each task's examples tagged before mixing
  tagged.get_task_dataset = lambda task, *args, **kw: tag(provider.get_task_dataset(task, *args, **kw),
                                                          index[task.name])
  return tagged.get_dataset(lengths, **kwargs)


def get_dataset(mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], split: str,
                global_batch_size: int, *, shuffle: bool = True, seed: int = 0, pack: bool = True,
                num_epochs: int | None = None, skip_batches: int = 0,
                shard: tuple[int, int] | None = None, with_task_index: bool = False) -> tf.data.Dataset:
  """This process's share of every global batch, as a tf.data pipeline of numpy-able dicts.

  Process i of n reads shard i of n and gives rows [i * B/n, (i + 1) * B/n) of each global batch
  of B rows. `shard=(i, n)` overrides the process index and count (to replay a multi-host run's
  data on one host). The pipeline is deterministic given the seed, so skipping `skip_batches`
  batches resumes a run exactly where a previous one stopped.

  `with_task_index` adds TASK_INDEX (shaped like the tokens: the position in `task_names` of each
  token's task, -1 on padding) and leaves every other feature exactly as without it; the model
  must not be given it.
  """
  check_task_name(mixture_or_task_name)
  use_tfds_data_dir()  # TFDS_DATA_DIR, as gin binds it
  index, num_processes = shard or (jax.process_index(), jax.process_count())
  if global_batch_size % num_processes:
    raise UserError(f"BATCH_SIZE={global_batch_size} is not divisible by the {num_processes} processes")
  converter = feature_converter(pack, vocabulary(mixture_or_task_name), with_task_index)
  options = dict(shuffle=shuffle, num_epochs=num_epochs, shard_info=seqio.ShardInfo(index, num_processes),
                 seed=seed, use_cached=False)
  if not with_task_index:
    ds = seqio.get_dataset(mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
                           dataset_split=split, feature_converter=converter, **options)
  else:  # what seqio.get_dataset does, with the tagged examples and the converter that keeps the tag
    if set(task_feature_lengths) != {"inputs", "targets"}:
      raise UserError(f"the task index needs 'inputs' and 'targets' lengths, not {dict(task_feature_lengths)}")
    ds = _examples_with_task_index(mixture_or_task_name, task_feature_lengths, split=split, **options)
    ds = converter(ds, {**task_feature_lengths, TASK_INDEX: sum(task_feature_lengths.values())})
  ds = ds.batch(global_batch_size // num_processes, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


POSITION_SETTINGS = "input_settings.json"  # beside each saved position: what its batches look like


def position_settings(global_batch_size: int, task_feature_lengths: Mapping[str, int]) -> dict:
  """What a saved position fits: its pipeline's batch size, feature lengths and number of processes. A position
  saved with other ones cannot continue this pipeline (its shuffle, packing and prefetched batches are of others)."""
  return {"batch_size": int(global_batch_size), "processes": jax.process_count(),
          "task_feature_lengths": {k: int(v) for k, v in sorted(task_feature_lengths.items())}}


class InputIterator:
  """This process's batches of a tf.data pipeline, with a position that can be saved and restored.

  The position of step N is written to `directory/process_<i>/<N>` (a tf.train.Checkpoint of the
  iterator: shuffle buffers, packing state and prefetched batches included), into a temporary
  directory renamed when complete. Restoring it continues with exactly the batch an uninterrupted
  run would read next, in time that does not grow with N.

  In a bucket (`directory` gs://..., s3://...) a position is written to a local temporary directory
  and uploaded file by file, the step's own files last in name order (position.data-*, position.index,
  then the small records): a resume reads the position only when its records are there, so an upload
  cut short is never taken for a position; it is read back through a local copy. TensorFlow's own GCS
  client is not used.

  `settings` (position_settings) are written beside each position (POSITION_SETTINGS) and read back by
  `saved_settings`, so a resume can tell a position of other batches before restoring it.
  """

  def __init__(self, ds: tf.data.Dataset, directory: str, settings: Optional[Mapping] = None):
    options = tf.data.Options()
    # Tokenizers that run as py_functions hold no state the position depends on.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    self._iterator = iter(ds.with_options(options))
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
    self.directory = storage.join(directory, f"process_{jax.process_index()}")
    self.settings = dict(settings or {})
    self._peeked = None  # the batch `fits` read, given out by the next call to next()

  def __iter__(self) -> "InputIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    element, self._peeked = self._peeked, None
    return {k: v.numpy() for k, v in (element if element is not None else next(self._iterator)).items()}

  def fits(self) -> bool:
    """Whether the restored position continues this pipeline: reads the next batch (kept for next()); False
    when TensorFlow refuses it, as for a position saved with another batch size or feature lengths (then this
    iterator is spent: make a new one). Call it before any save: the kept batch is not in a saved position."""
    try:
      self._peeked = next(self._iterator)
    except tf.errors.InvalidArgumentError:
      return False
    return True

  def save(self, step: int, keep: Optional[set] = None, files: Optional[Mapping[str, str]] = None) -> None:
    """Writes the position after `step` batches, with `files` (name -> text: small records that
    belong to this step, read back by `path`); removes the positions of steps not in `keep` and
    any earlier write that was cut short."""
    if self.settings:
      files = {**(files or {}), POSITION_SETTINGS: json.dumps(self.settings) + "\n"}
    if storage.is_remote(self.directory):
      self._save_remote(step, keep, files)
      return
    final = os.path.join(self.directory, str(step))
    tmp = f"{final}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    self._checkpoint.write(os.path.join(tmp, "position"))
    for name, text in (files or {}).items():
      try:
        with open(os.path.join(tmp, name), "w") as f:
          f.write(text)
      except OSError as e:  # name the file: a full disk is reported as this step's input position
        raise OSError(e.errno, e.strerror, os.path.join(tmp, name)) from e
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for name in os.listdir(self.directory):  # positions of dropped steps, and writes cut short
      if ".tmp-" in name or (keep is not None and name.isdigit() and int(name) not in keep | {step}):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _save_remote(self, step: int, keep: Optional[set], files: Optional[Mapping[str, str]]) -> None:
    final = storage.join(self.directory, str(step))
    with tempfile.TemporaryDirectory(prefix="flan_jax_position_") as scratch:
      self._checkpoint.write(os.path.join(scratch, "position"))
      for name, text in (files or {}).items():
        with open(os.path.join(scratch, name), "w") as f:
          f.write(text)
      storage.rmtree(final, ignore_errors=True)
      storage.copy_local_to(scratch, final)
    for name in storage.listdir(self.directory):  # positions of dropped steps
      if keep is not None and name.isdigit() and int(name) not in keep | {step}:
        storage.rmtree(storage.join(self.directory, name), ignore_errors=True)

  def path(self, step: int, name: str) -> str:
    """Where `save(step, files={name: ...})` keeps that file."""
    return storage.join(self.directory, str(step), name)

  def saved_steps(self) -> list[int]:
    """The steps this process has a saved position of (or the start of one), newest first."""
    names = storage.listdir(self.directory) if storage.isdir(self.directory) else []
    return sorted((int(name) for name in names if name.isdigit()), reverse=True)

  def saved_settings(self, step: int) -> Optional[dict]:
    """The settings saved with the position of `step`; None for a position saved without them (older runs)."""
    path = self.path(step, POSITION_SETTINGS)
    return storage.read_json(path) if storage.isfile(path) else None

  def restore(self, step: int) -> bool:
    """Moves to the saved position of `step`; False if there is none (then nothing changes)."""
    if storage.is_remote(self.directory):
      directory = storage.join(self.directory, str(step))
      if not storage.exists(storage.join(directory, "position.index")):
        return False
      with tempfile.TemporaryDirectory(prefix="flan_jax_position_") as scratch:
        self._checkpoint.read(os.path.join(storage.copy_to_local(directory, scratch), "position")).assert_consumed()
      return True
    path = os.path.join(self.directory, str(step), "position")
    if not tf.io.gfile.exists(path + ".index"):
      return False
    self._checkpoint.read(path).assert_consumed()
    return True
