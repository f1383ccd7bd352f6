"""Super-NaturalInstructions (NIv2), the sub-mixture of the Flan 2022 recipe (Longpre et al. 2023).

TFDS's `natural_instructions:1.0.1` puts every NIv2 task (about 1,600) into one `train` split, one row
per instance: `id`, `input`, `output` (the first reference), `source` (the first source dataset),
`task_name` and `definition`. It holds no positive or negative examples and no categories, so:
- the instruction is the task's own definition, then the instance's input; the target is its output;
- a few-shot prompt shows other instances of the same task (with their outputs) as exemplars, never
  the instance itself, as many as fit a length budget in characters (prompts are text here: the run's
  vocabulary is only known when the data is tokenized) or a fixed number of them;
- one seqio task covers the whole collection, and NIv2's per-task cap is counted by `task_name`.

Every step that decides *which* instances are used (the held-out share, the exclusion by source
dataset, the cap) runs in the data source, not in a preprocessor, so the contamination gate
(flan_jax.data.contamination), which reads sources raw, sees exactly the instances a task trains on.
The source reads its files in a fixed order (seqio shuffles the rendered examples afterwards), so the
cap keeps the same instances in every run.
"""

import functools
import re
from typing import Mapping, Optional, Sequence

import seqio
from t5.evaluation import metrics as t5_metrics
import tensorflow as tf
from tensorflow_datasets.datasets.natural_instructions import natural_instructions_dataset_builder as _builder

from flan_jax import task_info
from flan_jax.errors import UserError
from flan_jax.text import formats
from flan_tasks import instruction, metrics
from flan_tasks import templates as templates_lib
from flan_tasks.flan import clusters, collection
from flan_tasks.templates import Template

TFDS = "natural_instructions:1.0.1"
DATASET = "flan_niv2"  # the task_info dataset of every task here: one TFDS dataset, one collection
CLUSTER = "niv2"
ZERO_SHOT = "flan_niv2_zeroshot"
FEW_SHOT = "flan_niv2_fewshot"
EVAL = "flan_niv2_eval"
MIXTURE = "flan_niv2"

# Instances per NIv2 task that training keeps. NOT taken from the Flan 2022 code (not confirmed there):
# 100 is the per-task instance count Super-NaturalInstructions' own Tk-Instruct models trained on.
MAX_INSTANCES_PER_TASK = 100
EVAL_INSTANCES_PER_TASK = 100  # Super-NaturalInstructions evaluates on at most 100 instances per task
# The builder has no held-out split: an instance is held out for evaluation when its id hashes into
# the first HELD_OUT_BUCKETS of HASH_BUCKETS (2%), whatever the order or sharding of the data.
HASH_BUCKETS = 100
HELD_OUT_BUCKETS = 2
HASH_KEY = (2022, 0x1712)  # the key of that hash (fixed: changing it changes the split)

# The mixture's configured rates (flan_jax.data.accounting normalises them into trained_on.json): the
# Flan 2022 recipe trains on zero-shot and few-shot prompts together; here in equal parts.
RATES = {ZERO_SHOT: 1.0, FEW_SHOT: 1.0}

# Few-shot prompts: at most MAX_SHOTS exemplars, and the whole prompt within FEWSHOT_MAX_CHARS characters.
# Exemplars are drawn from a window of WINDOW instances of the same task, in the order read.
MAX_SHOTS = 5
FEWSHOT_MAX_CHARS = 4_000
WINDOW = 8

# The glue text, in one place. A prompt is the definition, the exemplars (few-shot), then the query; only the
# prompts (`inputs`) of these templates are rendered, the target is always the instance's output.
DEFINITION = Template("Instructions: {definition}\n\n", "{answer}")
EXEMPLAR = Template("Sample input: {input}\nSample output: {output}\n\n", "{answer}")
QUERY = Template("Input: {input}\nOutput:", "{answer}")
FIELDS = ("definition", "input", "output", "answer")
STOP = ("\n\nSample input:", "\n\nInput:")

# TFDS builders that gather many datasets under one name: their name says nothing about a dataset.
_COLLECTIONS = ("glue", "super_glue", "gem", "wmt14_translate", "wmt16_translate", "para_crawl")


def task_names() -> tuple[str, ...]:
  """The NIv2 task names the TFDS builder downloads (one file each): the values of `task_name`."""
  return tuple(_builder._NIV2_TASKS_LIST)


# ------------------------------------------------------------------ which instances
def held_out(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Whether an instance belongs to the evaluation share (by a keyed hash of its id)."""
  return tf.strings.to_hash_bucket_strong(ex["id"], HASH_BUCKETS, list(HASH_KEY)) < HELD_OUT_BUCKETS


def _words(text: tf.Tensor) -> tf.Tensor:
  """"task1344_GLUE rte" -> "_task1344_glue_rte_": lower-case words joined and wrapped by "_"."""
  words = tf.strings.regex_replace(tf.strings.lower(text), r"[^a-z0-9]+", "_")
  return tf.strings.join(["_", tf.strings.strip(words), "_"])


def _normal(name: str) -> str:
  return "_".join(re.findall(r"[a-z0-9]+", name.lower()))


def excluded(ex: Mapping[str, tf.Tensor], names: Sequence[str]) -> tf.Tensor:
  """Whether the instance's source dataset or task name holds one of `names` as whole words
  ("anli" matches source "anli" and task "task202_anli_r1_classification", not "scanlines")."""
  if not names:
    return tf.constant(False)
  text = tf.strings.join([_words(ex["source"]), _words(ex["task_name"])])
  hits = [tf.strings.regex_full_match(text, f".*_{re.escape(_normal(n))}_.*") for n in names]
  return tf.reduce_any(tf.stack(hits))


def cluster_exclusions(cluster: str) -> tuple[str, ...]:
  """The dataset names whose NIv2 tasks leave training when FLAN 2021's `cluster` is held out: each
  FLAN dataset of the cluster (and of the clusters it overlaps) by its own name and its TFDS
  builder's name (except a collection's, such as glue). A match by name only: see the module doc."""
  wanted = clusters.overlapping(cluster)
  names = []
  for d in collection.DATASETS:
    if d.cluster not in wanted:
      continue
    builder = d.tfds.split(":")[0].split("/")[0]
    for name in (d.name, builder):
      if name not in _COLLECTIONS and _normal(name) not in names:
        names.append(_normal(name))
  return tuple(names)


def cap_per_task(ds: tf.data.Dataset, cap: int, extra_buckets: int = 1024) -> tf.data.Dataset:
  """Keeps the first `cap` instances of each `task_name`, in the order read.

  The counts sit in one vector: the builder's task names each have their own slot, any other name
  (another builder version, mock data) one of `extra_buckets` hashed slots, which two such names may
  share (then they share one cap: never more than `cap` of a name are kept).
  """
  if cap < 1:
    raise UserError(f"NIv2: the cap on instances per task must be at least 1, got {cap}")
  names = task_names()
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(names), tf.range(len(names), dtype=tf.int64)), -1)
  size = len(names) + extra_buckets

  def count(counts, ex):
    slot = table.lookup(ex["task_name"])
    slot = tf.where(slot < 0, len(names) + tf.strings.to_hash_bucket_fast(ex["task_name"], extra_buckets), slot)
    seen = counts[slot]
    return tf.tensor_scatter_nd_add(counts, [[slot]], [1]), (ex, seen < cap)

  def kept(ex, keep):
    del ex
    return keep

  def example(ex, keep):
    del keep
    return ex

  return ds.scan(tf.zeros([size], tf.int32), count).filter(kept).map(example)


class Niv2Source(seqio.TfdsDataSource):
  """The NIv2 instances one task uses: its share (training or held out), less the excluded source
  datasets, at most `cap` per task. Files are always read in order (the cap must see a fixed order);
  `shuffle` is left to seqio's shuffle of the rendered examples."""

  def __init__(self, held_out_share: bool, cap: int, exclude: Sequence[str] = ()):
    splits = {"test": "train"} if held_out_share else {"train": "train"}
    super().__init__(TFDS, splits=splits)
    self.held_out_share = held_out_share
    self.cap = cap
    self.exclude = tuple(exclude)

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None, shard_info: Optional[seqio.ShardInfo] = None,
                  num_epochs: Optional[int] = 1, **kwargs) -> tf.data.Dataset:
    # One pass is filtered and capped, then repeated: a cap counted across epochs would end the data.
    ds = super().get_dataset(split=split, shuffle=False, seed=seed, shard_info=shard_info, num_epochs=1, **kwargs)
    share = self.held_out_share
    ds = ds.filter(lambda ex: tf.equal(held_out(ex), share))
    if self.exclude:
      ds = ds.filter(lambda ex: tf.logical_not(excluded(ex, self.exclude)))
    ds = cap_per_task(ds, self.cap)
    return ds if num_epochs == 1 else ds.repeat(num_epochs)

  def num_input_examples(self, split: str) -> Optional[int]:
    return None  # known only after reading: the rates are set by hand (RATES)

  def list_shards(self, split: str) -> Sequence[str]:
    try:
      return super().list_shards(split)
    except KeyError:  # not prepared yet (or mocked): TFDS has no file list; one logical shard
      return [split]


# ------------------------------------------------------------------ prompts
def _fields(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  return {"definition": ex["definition"], "input": ex["input"], "output": ex["output"],
          "answer": ex["output"]}


def _finish(inputs: tf.Tensor, targets: tf.Tensor) -> dict[str, tf.Tensor]:
  return {"inputs": inputs, "targets": targets, formats.DELIMITER: formats.tf_delimiter(inputs, None)}


def zero_shot(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Definition, then the instance's input; the target is its output."""
  fields = _fields(ex)
  inputs = tf.strings.join([templates_lib.render(DEFINITION.inputs, fields),
                            templates_lib.render(QUERY.inputs, fields)])
  return _finish(inputs, ex["output"])


def glue_chars(shots: int) -> int:
  """The characters a prompt with `shots` exemplars takes with every field empty: its glue alone."""
  empty = {name: "" for name in FIELDS}
  return len(DEFINITION.inputs.format(**empty)) + shots * len(EXEMPLAR.inputs.format(**empty)) + len(
      QUERY.inputs.format(**empty))


def check_shots(shots: Optional[int], max_chars: int, window: int) -> None:
  """One-line UserError for a few-shot setting no prompt can meet."""
  if max_chars < glue_chars(0):
    raise UserError(f"NIv2 few-shot: max_chars={max_chars} is below the {glue_chars(0)} characters of a "
                    "zero-shot prompt's own text")
  if shots is None:
    return
  if shots < 1:
    raise UserError(f"NIv2 few-shot: shots must be at least 1 (or None for as many as fit), got {shots}")
  if shots > window - 1:
    raise UserError(f"NIv2 few-shot: {shots} shots need a window of {shots + 1} instances, got window={window}")
  if glue_chars(shots) > max_chars:
    raise UserError(f"NIv2 few-shot: {shots} shots do not fit max_chars={max_chars}: their labels alone take "
                    f"{glue_chars(shots)} characters; ask for fewer shots, or shots=None for as many as fit")


def _fewshot_window(batch: Mapping[str, tf.Tensor], shots: Optional[int], max_chars: int,
                    max_shots: int) -> dict[str, tf.Tensor]:
  """The prompts of a window of instances of one task: for instance i, the next instances of the
  window (i+1, i+2, ..., cyclically) that are of its task and whose input differs from its own, as
  exemplars while they fit. `keep` is False where a fixed number of shots cannot be met."""
  fields = _fields(batch)
  n = tf.shape(batch["input"])[0]
  exemplars = templates_lib.render(EXEMPLAR.inputs, fields)  # [n]
  cost = tf.strings.length(exemplars, unit="UTF8_CHAR")
  head = templates_lib.render(DEFINITION.inputs, fields)  # [n]
  query = templates_lib.render(QUERY.inputs, fields)
  base = tf.strings.length(head, unit="UTF8_CHAR") + tf.strings.length(query, unit="UTF8_CHAR")
  steps = tf.range(1, tf.maximum(n, 1))  # [n-1]
  order = tf.math.floormod(tf.range(n)[:, None] + steps[None, :], n)  # [n, n-1]: the other instances
  usable = tf.logical_and(tf.equal(tf.gather(batch["task_name"], order), batch["task_name"][:, None]),
                          tf.not_equal(tf.gather(batch["input"], order), batch["input"][:, None]))
  used_cost = tf.cumsum(tf.where(usable, tf.gather(cost, order), 0), axis=1)
  rank = tf.cumsum(tf.cast(usable, tf.int32), axis=1)
  limit = max_shots if shots is None else shots
  take = usable & (rank <= limit) & (base[:, None] + used_cost <= max_chars)
  chosen = tf.ragged.boolean_mask(tf.gather(exemplars, order), take)
  inputs = tf.strings.join([head, tf.strings.reduce_join(chosen, axis=1), query])
  count = tf.reduce_sum(tf.cast(take, tf.int32), axis=1)
  keep = tf.ones_like(count, tf.bool) if shots is None else tf.equal(count, shots)
  out = {"inputs": inputs, "targets": batch["output"], "shots": count, "keep": keep}
  out[formats.DELIMITER] = formats.tf_delimiter(inputs, None)  # elementwise
  return out


def few_shot(ds: tf.data.Dataset, shots: Optional[int] = None, max_chars: int = FEWSHOT_MAX_CHARS,
             window: int = WINDOW, max_shots: int = MAX_SHOTS) -> tf.data.Dataset:
  """Few-shot prompts over a stream of instances: windows of up to `window` instances of one task
  (grouped by task name as read), each instance prompted with exemplars from its own window.

  `shots=None`: as many exemplars as fit `max_chars` (at most `max_shots`; none if none fit).
  `shots=k`: exactly k, and an instance whose window cannot give k that fit is left out.
  """
  check_shots(shots, max_chars, window)

  def per_task(key, group):
    del key
    rows = group.batch(window).map(functools.partial(_fewshot_window, shots=shots, max_chars=max_chars,
                                                     max_shots=max_shots))
    return rows.unbatch()

  key = lambda ex: tf.strings.to_hash_bucket_fast(ex["task_name"], 2**62)
  ds = ds.group_by_window(key, per_task, window_size=window)
  ds = ds.filter(lambda ex: ex["keep"])
  return ds.map(lambda ex: {k: ex[k] for k in ("inputs", "targets", formats.DELIMITER)},
                num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------ metrics and tasks
def rouge_l(targets, predictions):
  """ROUGE-L against the single reference, as Super-NaturalInstructions reports it."""
  return t5_metrics.rouge(targets, predictions, score_keys=("rougeL",))


METRICS = (metrics.squad, rouge_l)  # exact match and token F1 (SQuAD normalisation), and ROUGE-L


def _record(name: str, kind: str) -> str:
  task_info.register(name, dataset=DATASET, cluster=CLUSTER, template=None, kind=kind)
  formats.set_stop_strings(name, STOP)
  return name


def _add(name: str, source: Niv2Source, render, kind: str) -> str:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  numbered = [instruction.add_example_ids] if kind == "generative" else []
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[render] + numbered + [formats.preprocessor("generate" if kind == "generative" else "train")],
      output_features=instruction.output_features(), metric_fns=list(METRICS))
  return _record(name, kind)


def add_zero_shot_task(name: str, *, cap: int = MAX_INSTANCES_PER_TASK, exclude: Sequence[str] = ()) -> str:
  """A training task: definition + input -> output, over the capped training share."""
  return _add(name, Niv2Source(False, cap, exclude), seqio.map_over_dataset(zero_shot), "train")


def add_few_shot_task(name: str, *, shots: Optional[int] = None, max_chars: int = FEWSHOT_MAX_CHARS,
                      cap: int = MAX_INSTANCES_PER_TASK, exclude: Sequence[str] = ()) -> str:
  """A training task of few-shot prompts (see `few_shot`) over the capped training share."""
  check_shots(shots, max_chars, WINDOW)
  render = functools.partial(few_shot, shots=shots, max_chars=max_chars)
  return _add(name, Niv2Source(False, cap, exclude), render, "train")


def add_eval_task(name: str = EVAL) -> str:
  """The generative evaluation task: zero-shot prompts over the held-out share (split `test`), at most
  EVAL_INSTANCES_PER_TASK per task; exact match, token F1 and ROUGE-L on the output."""
  return _add(name, Niv2Source(True, EVAL_INSTANCES_PER_TASK), seqio.map_over_dataset(zero_shot), "generative")


def mixtures() -> dict[str, dict[str, float]]:
  """Mixture name -> {task: configured rate}: `flan_niv2`, and `flan_niv2_no_<cluster>` for each FLAN
  2021 cluster, whose tasks leave out the NIv2 tasks of that cluster's datasets (`cluster_exclusions`)."""
  out = {MIXTURE: dict(RATES)}
  for cluster in clusters.CLUSTERS:
    out[f"{MIXTURE}_no_{cluster}"] = {f"{task}_no_{cluster}": rate for task, rate in RATES.items()}
  return out


def _register_mixture(name: str, rates: Mapping[str, float]) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(rates.items()))


def register_all() -> list[str]:
  """Registers the NIv2 tasks and mixtures (again, replacing them: idempotent); returns their names.
  Builds seqio objects only: nothing is read or downloaded until a task's data is."""
  names = [add_zero_shot_task(ZERO_SHOT), add_few_shot_task(FEW_SHOT), add_eval_task()]
  for cluster in clusters.CLUSTERS:
    exclude = cluster_exclusions(cluster)
    names.append(add_zero_shot_task(f"{ZERO_SHOT}_no_{cluster}", exclude=exclude))
    names.append(add_few_shot_task(f"{FEW_SHOT}_no_{cluster}", exclude=exclude))
  for name, rates in mixtures().items():
    _register_mixture(name, rates)
    names.append(name)
  return names

