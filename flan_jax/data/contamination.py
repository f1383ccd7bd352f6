"""A contamination check for held-out evaluation: refuses held-out datasets that the training mixture
trains on, or whose examples share word n-grams (or, when short, their whole text) with its examples.
"""

import dataclasses
import logging
import re
from typing import Iterator, Optional, Sequence

import numpy as np
import seqio

from flan_jax import task_info
from flan_jax.data import pipeline as data_lib
from flan_jax.errors import UserError, first_line

TRAIN_SPLIT = "train"
EXAMPLE_CHARS = 80  # how much of an offending example a message or the record shows
_WORD = re.compile(r"[a-z0-9]+")
_MULTIPLIER = np.uint64(0x100000001B3)  # of the rolling n-gram hash (64-bit, wrapping)


class ContaminationError(UserError):
  """A held-out dataset is trained on, or overlaps the training examples; `record` holds the details
  (the record `check` would have returned, or the dataset-level overlap)."""

  def __init__(self, message: str, record: dict):
    super().__init__(message)
    self.record = record


def check(train_mixture_or_task: str, eval_tasks: Sequence[str], *, n: int = 13,
          max_dirty_fraction: float = 0.01, eval_splits: Sequence[str] = ("validation", "test"),
          max_train_examples_per_task: Optional[int] = None,
          max_eval_examples: Optional[int] = None) -> dict:
  """Refuses (ContaminationError, a UserError) evaluating `eval_tasks` after training on
  `train_mixture_or_task` when a held-out dataset is trained on, or when more than
  `max_dirty_fraction` of a held-out dataset's examples are "dirty": they share an `n`-word
  sequence with a training example or, shorter than `n` words, equal one as a whole.

  Examples are read raw from the task sources (before templates): the training tasks' train split
  (at most `max_train_examples_per_task` each) and each held-out dataset's `eval_splits` (at most
  `max_eval_examples` per split). An example's text is its string fields (a list of strings is one
  field), lower-cased and split into [a-z0-9]+ words; the fields are put in a canonical order (by
  their words), so a copy under other field names matches. `eval_tasks` may name mixtures.
  Returns a JSON-able record of what was checked.
  """
  if n < 1:
    raise UserError(f"contamination check: n must be at least 1, got {n}")
  if not 0 <= max_dirty_fraction <= 1:
    raise UserError(f"contamination check: max_dirty_fraction must be in [0, 1], got {max_dirty_fraction}")
  train_tasks = _tasks(train_mixture_or_task)
  held_out = _eval_datasets(eval_tasks)
  _check_datasets(train_mixture_or_task, train_tasks, held_out)
  record = {
      "train": train_mixture_or_task,
      "train_tasks": [task.name for task in train_tasks],
      "n": n,
      "max_dirty_fraction": max_dirty_fraction,
      "eval_splits": list(eval_splits),
      "max_train_examples_per_task": max_train_examples_per_task,
      "max_eval_examples": max_eval_examples,
  }
  indexes = _train_indexes(train_tasks, n, max_train_examples_per_task)
  record["train_datasets"] = {index.dataset: {"tasks": index.tasks, "examples": index.examples}
                              for index in indexes}
  record["train_examples"] = sum(index.examples for index in indexes)
  record["eval_datasets"] = {
      dataset: _check_examples(tasks, indexes, n, eval_splits, max_eval_examples)
      for dataset, tasks in held_out.items()}
  dirty = {dataset: stats for dataset, stats in record["eval_datasets"].items()
           if stats["fraction"] > max_dirty_fraction}
  record["clean"] = not dirty
  if dirty:
    raise ContaminationError(_dirty_message(train_mixture_or_task, dirty, n, max_dirty_fraction),
                             record)
  return record


# ------------------------------------------------------------------ tasks and datasets
def _resolve(name: str):
  """The registered Task or Mixture `name`; UserError (with close names) for an unknown one."""
  data_lib.check_task_name(name)
  return seqio.get_mixture_or_task(name)


def _tasks(name: str) -> list[seqio.Task]:
  """The tasks a mixture trains on (its leaf tasks with a non-zero rate), or the task itself."""
  resolved = _resolve(name)
  if not isinstance(resolved, seqio.Mixture):
    return [resolved]
  return [task for task in resolved.tasks if _rate(resolved, task) != 0]


def _rate(mixture: seqio.Mixture, task: seqio.Task) -> Optional[float]:
  try:
    return mixture.get_rate(task)
  except Exception:  # (a rate function that needs data: count the task as trained on)
    return None


def _registered(task_name: str) -> bool:
  return task_name in task_info.tasks_of(task_info.lookup(task_name).dataset)


def _eval_datasets(names: Sequence[str]) -> dict[str, list[seqio.Task]]:
  """Held-out dataset -> its evaluation tasks (mixtures expanded), in order."""
  if isinstance(names, str):
    names = [names]
  if not names:
    raise UserError("contamination check: no evaluation tasks given")
  out: dict[str, list[seqio.Task]] = {}
  for name in names:
    for task in _tasks(name):
      tasks = out.setdefault(task_info.lookup(task.name).dataset, [])
      if task not in tasks:
        tasks.append(task)
  return out


def _trained_dataset(task_name: str, held_out: Sequence[str]) -> Optional[str]:
  """The held-out dataset a training task belongs to: by its task_info record, or, for a task
  nobody registered, by name (`<dataset>` or `<dataset>_<variant>`)."""
  dataset = task_info.lookup(task_name).dataset
  if dataset in held_out:
    return dataset
  if not _registered(task_name):
    for candidate in held_out:
      if task_name == candidate or task_name.startswith(candidate + "_"):
        return candidate
  return None


def _check_datasets(train: str, train_tasks: Sequence[seqio.Task],
                    held_out: dict[str, list[seqio.Task]]) -> None:
  overlap: dict[str, list[str]] = {}
  for task in train_tasks:
    dataset = _trained_dataset(task.name, list(held_out))
    if dataset is not None:
      overlap.setdefault(dataset, []).append(task.name)
  if not overlap:
    return
  clusters = sorted({task_info.lookup(held_out[d][0].name).cluster for d in overlap})
  known = [c for c in clusters if c != task_info.UNKNOWN_CLUSTER]
  datasets = ", ".join(f"{d} (task {', '.join(tasks)})" for d, tasks in overlap.items())
  where = (f"cluster{'s' if len(known) > 1 else ''} {', '.join(known)}" if known
           else "the held-out datasets")
  raise ContaminationError(
      f"contamination: the training mixture '{train}' trains on held-out dataset"
      f"{'s' if len(overlap) > 1 else ''} {datasets}; leave {where} out of the training mixture"
      f"{_suggestion(train, known)}, or evaluate another cluster",
      {"train": train, "trained_on": overlap})


def _suggestion(train: str, clusters: Sequence[str]) -> str:
  """" (e.g. train on 'flan_no_nli_notemplate')": a registered `<prefix>_no_<cluster>` mixture,
  with the training mixture's variant suffix when there is one."""
  if len(clusters) != 1:
    return ""
  base = f"{train.split('_')[0]}_no_{clusters[0]}"
  candidates = [name for name in seqio.MixtureRegistry.names() if name != train and (
      name == base or name.startswith(base + "_") and train.endswith(name[len(base):]))]
  return f" (e.g. train on '{max(candidates, key=len)}')" if candidates else ""


# ------------------------------------------------------------------ examples
def _field_texts(value) -> list[str]:
  """The string fields of a decoded example: each string, and each list of strings joined."""
  if isinstance(value, dict):
    return [text for key in value for text in _field_texts(value[key])]
  if isinstance(value, bytes):
    return [value.decode("utf-8", "replace")]
  if isinstance(value, str):
    return [value]
  if hasattr(value, "to_list"):  # a ragged value
    value = value.to_list()
  if isinstance(value, np.ndarray):
    if value.dtype.kind not in "OSU":
      return []
    value = value.ravel().tolist()
  if isinstance(value, (list, tuple)):
    items = [text for item in value for text in _field_texts(item)]
    return [" ".join(items)] if items else []
  return []


def _words(fields: Sequence[str]) -> list[str]:
  """The example's words, its fields in a canonical order (sorted by their words)."""
  per_field = sorted(tuple(_WORD.findall(text.lower())) for text in fields)
  return [word for words in per_field for word in words]


def _shown(fields: Sequence[str]) -> str:
  return _truncate(" ".join(" ".join(fields).split()))


def _truncate(text: str) -> str:
  return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 3] + "..."


def _ngram_hashes(words: Sequence[str], n: int) -> np.ndarray:
  """A 64-bit hash of each of the n-word windows of `words` (which has at least n words)."""
  ids = np.fromiter((hash(word) for word in words), dtype=np.int64, count=len(words)).view(np.uint64)
  count = len(words) - n + 1
  out = np.zeros(count, np.uint64)
  for i in range(n):
    out = out * _MULTIPLIER + ids[i:i + count]
  return out


def _read(task: seqio.Task, split: str, limit: Optional[int]) -> Iterator[list[str]]:
  """The string fields of the task source's raw examples of `split`, in order."""
  try:
    ds = task.source.get_dataset(split=split, shuffle=False)
    if limit is not None:
      ds = ds.take(limit)
    for example in ds.as_numpy_iterator():
      yield _field_texts(example)
  except Exception as e:  # an unprepared TFDS dataset, an unreadable file, ...)
    raise UserError(f"contamination check: cannot read split '{split}' of task {task.name}: "
                    f"{first_line(e)}") from e


def _member(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Whether each of `values` is in the sorted array `sorted_values`."""
  if not len(sorted_values) or not len(values):
    return np.zeros(len(values), bool)
  at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
  return sorted_values[at] == values


@dataclasses.dataclass
class _TrainIndex:
  """The n-grams (sorted, unique hashes) and the short examples' hashes of one training dataset."""
  dataset: str
  tasks: list[str]
  examples: int
  ngrams: np.ndarray
  short: set[int]


def _train_indexes(tasks: Sequence[seqio.Task], n: int, limit: Optional[int]) -> list[_TrainIndex]:
  """One index per training dataset (the tasks of one dataset share its source: read it once)."""
  by_dataset: dict[str, list[seqio.Task]] = {}
  for task in tasks:
    by_dataset.setdefault(task_info.lookup(task.name).dataset, []).append(task)
  out = []
  for dataset, dataset_tasks in by_dataset.items():
    task = dataset_tasks[0]
    chunks, short, examples = [], set(), 0
    if TRAIN_SPLIT in task.source.splits:
      for fields in _read(task, TRAIN_SPLIT, limit):
        examples += 1
        words = _words(fields)
        if len(words) >= n:
          chunks.append(_ngram_hashes(words, n))
        elif words:
          short.add(hash(tuple(words)))
    ngrams = np.unique(np.concatenate(chunks)) if chunks else np.zeros(0, np.uint64)
    logging.info("contamination: read %d training examples of %s (%d %d-grams)", examples,
                 task.name, len(ngrams), n)
    out.append(_TrainIndex(dataset, [t.name for t in dataset_tasks], examples, ngrams, short))
  return out


def _check_examples(tasks: Sequence[seqio.Task], indexes: Sequence[_TrainIndex], n: int,
                    splits: Sequence[str], limit: Optional[int]) -> dict:
  """Reads one held-out dataset's splits and finds its dirty examples; returns its record."""
  task = tasks[0]  # the dataset's tasks share one source
  where, shown, words_of = [], [], []  # per example: (split, index), its text, its words
  hashes, owners, short = [], [], {}
  split_sizes = {}
  for split in splits:
    if split not in task.source.splits:
      continue
    count = 0
    for index, fields in enumerate(_read(task, split, limit)):
      number = len(where)
      words = _words(fields)
      where.append((split, index))
      shown.append(_shown(fields))
      words_of.append(" ".join(words))
      if len(words) >= n:
        hashes.append(_ngram_hashes(words, n))
        owners.append(np.full(len(hashes[-1]), number, np.int64))
      elif words:
        short[number] = hash(tuple(words))
      count += 1
    split_sizes[split] = count
  hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
  owners = np.concatenate(owners) if owners else np.zeros(0, np.int64)
  source_of: dict[int, str] = {}  # dirty example -> the first training task it overlaps
  shared: dict[int, str] = {}  # dirty example -> the shared n-gram (or its whole text)
  for index in indexes:
    found = _member(index.ngrams, hashes)
    for position in np.flatnonzero(found):
      number = int(owners[position])
      if number not in source_of:
        source_of[number] = index.tasks[0]
        first = position - np.searchsorted(owners, number)  # the n-gram's place in its example
        shared[number] = " ".join(words_of[number].split()[first:first + n])
    for number, value in short.items():
      if number not in source_of and value in index.short:
        source_of[number], shared[number] = index.tasks[0], words_of[number]
  dirty_splits = {split: 0 for split in split_sizes}
  for number in source_of:
    dirty_splits[where[number][0]] += 1
  checked, dirty = len(where), len(source_of)
  out = {
      "tasks": [t.name for t in tasks],
      "examples": checked,
      "dirty": dirty,
      "fraction": dirty / checked if checked else 0.0,
      "splits": {split: {"examples": size, "dirty": dirty_splits[split]}
                 for split, size in split_sizes.items()},
      "dirty_example": None,
  }
  if source_of:
    number = min(source_of)
    split, index = where[number]
    out["dirty_example"] = {"split": split, "index": index, "text": shown[number],
                            "shared": _truncate(shared[number]), "train_task": source_of[number]}
  return out


def _dirty_message(train: str, dirty: dict[str, dict], n: int, max_dirty_fraction: float) -> str:
  counts = ", ".join(f"{dataset} ({stats['dirty']} of {stats['examples']} examples, "
                     f"{stats['fraction']:.1%})" for dataset, stats in dirty.items())
  dataset, stats = next(iter(dirty.items()))
  example = stats["dirty_example"]
  plural = len(dirty) > 1
  return (f"contamination: held-out dataset{'s' if plural else ''} {counts} overlap{'' if plural else 's'} "
          f"the training data of '{train}' (a shared {n}-word sequence, or the whole text of an "
          f"example under {n} words) more than max_dirty_fraction={max_dirty_fraction:g} allows; "
          f"e.g. {dataset} {example['split']} example {example['index']} {example['text']!r} "
          f"shares {example['shared']!r} with training task {example['train_task']}; remove the "
          "overlapping examples from the training tasks, or evaluate another cluster")
