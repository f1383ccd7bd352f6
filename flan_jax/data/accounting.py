"""Per-task tallies of what a training run consumed: examples, tokens and target tokens of each task of
the mixture, as the trainer read them (after rates, caps and packing), beside the configured rates.
"""

import copy
import json
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np
import seqio

from flan_jax import storage
from flan_jax.data import pipeline as data_lib

# The run's tally, saved with process 0's position of each step; the trainer makes the newest one
# MODEL_DIR/trained_on.json (flan_jax.checkpoints.run_record.publish_trained_on).
FILE = "trained_on.json"
LOCAL_FILE = "tally.json"  # one process's counts, with its position of each step: what a resume continues from
_EXAMPLES, _TOKENS, _TARGET_TOKENS = range(3)


def configured_rates(mixture_or_task_name: str, split: str = "train") -> dict[str, float]:
  """The mixing rate of each task (in `data.task_names` order), normalised to sum to 1 over the tasks
  that have `split` (seqio leaves out the others; their rate is 0). A single task's rate is 1."""
  provider = seqio.get_mixture_or_task(mixture_or_task_name)
  if not isinstance(provider, seqio.Mixture):
    return {provider.name: 1.0}
  rates = {t.name: float(provider.get_rate(t)) if split in t.splits else 0.0 for t in provider.tasks}
  total = sum(rates.values())
  return {name: rate / total if total else 0.0 for name, rate in rates.items()}


class Tally:
  """Counts of the batches this process has read, by task; `files` adds up the processes' counts."""

  def __init__(self, mixture_or_task_name: str, split: str = "train"):
    self.name = mixture_or_task_name
    self.tasks = data_lib.task_names(mixture_or_task_name)
    self.rates = configured_rates(mixture_or_task_name, split)
    self.counts = np.zeros((len(self.tasks), 3), np.int64)  # examples, tokens, target tokens of each task
    self.padding_tokens = 0
    self.rows = 0

  def count(self, batch: Mapping[str, np.ndarray]) -> data_lib.Batch:
    """Adds a host-local batch carrying TASK_INDEX; returns the batch without it (for the model).

    An example is counted in the batch where its packed segment starts, a token when it is not
    padding, a target token when its loss weight is positive.
    """
    batch = dict(batch)
    task = batch.pop(data_lib.TASK_INDEX)
    real = task >= 0
    positions = batch.get("decoder_positions", np.broadcast_to(np.arange(task.shape[-1]), task.shape))
    n = len(self.tasks)
    self.counts[:, _EXAMPLES] += np.bincount(task[real & (positions == 0)], minlength=n)
    self.counts[:, _TOKENS] += np.bincount(task[real], minlength=n)
    self.counts[:, _TARGET_TOKENS] += np.bincount(task[real & (batch["decoder_loss_weights"] > 0)], minlength=n)
    self.padding_tokens += int(np.sum(~real))
    self.rows += task.shape[0]
    return batch

  def summary(self, step: int) -> dict[str, Any]:
    """The contents of trained_on.json for these counts, after `step` steps."""
    examples, tokens, target_tokens = (int(x) for x in self.counts.sum(axis=0))
    fraction = lambda part, whole: float(part) / whole if whole else 0.0
    tasks = {name: {"index": i, "configured_rate": self.rates[name],
                    "examples": int(c[_EXAMPLES]), "tokens": int(c[_TOKENS]), "target_tokens": int(c[_TARGET_TOKENS]),
                    "example_fraction": fraction(c[_EXAMPLES], examples),
                    "token_fraction": fraction(c[_TOKENS], tokens),
                    "target_token_fraction": fraction(c[_TARGET_TOKENS], target_tokens)}
             for i, (name, c) in enumerate(zip(self.tasks, self.counts))}
    return {
        "mixture_or_task": self.name,
        "step": step,
        "totals": {"rows": self.rows, "examples": examples, "tokens": tokens, "target_tokens": target_tokens,
                   "padding_tokens": self.padding_tokens,
                   "packing_efficiency": fraction(tokens, tokens + self.padding_tokens)},
        "tasks": tasks,
    }

  def load(self, path: str) -> bool:
    """Continues from the counts saved in `path` (a summary); False, changing nothing, if there is
    no such file or it counts other tasks."""
    if not storage.isfile(path):
      return False
    summary = storage.read_json(path)
    if summary["mixture_or_task"] != self.name or list(summary["tasks"]) != self.tasks:
      return False
    self.counts = np.array([[t["examples"], t["tokens"], t["target_tokens"]] for t in summary["tasks"].values()],
                           np.int64).reshape(len(self.tasks), 3)
    self.padding_tokens, self.rows = summary["totals"]["padding_tokens"], summary["totals"]["rows"]
    return True

  def files(self, step: int) -> dict[str, str]:
    """What `InputIterator.save(step, files=...)` keeps with this process's position: its own counts
    (LOCAL_FILE, for a resume) and, on process 0, the run's (FILE: the counts of all processes
    added up). Every process must call it at the same step (it gathers the counts)."""
    total = _sum_over_processes(np.concatenate([self.counts.ravel(), [self.padding_tokens, self.rows]]))
    text = lambda tally: json.dumps(tally.summary(step), indent=2) + "\n"
    if jax.process_index() != 0:
      return {LOCAL_FILE: text(self)}
    run = copy.copy(self)
    run.counts, run.padding_tokens, run.rows = total[:-2].reshape(self.counts.shape), *map(int, total[-2:])
    return {LOCAL_FILE: text(self), FILE: text(run)}


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
  """Sums int64 counts over the processes, in two 31-bit halves (JAX gathers 32-bit integers)."""
  values = np.asarray(values, np.int64)
  if jax.process_count() == 1:
    return values
  halves = np.stack([values >> 31, values & (2**31 - 1)]).astype(np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(halves)).astype(np.int64)  # [processes, 2, n]
  return ((gathered[:, 0] << 31) + gathered[:, 1]).sum(axis=0)
