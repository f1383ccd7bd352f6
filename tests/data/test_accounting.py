"""Tests for flan_jax/data/accounting.py: trained_on.json counts exactly what the trainer read, per task,
and a resumed run records the same as a straight one."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import seqio

from flan_jax import checkpoints
from flan_jax.data import accounting
from flan_jax.data import pipeline as data_lib
from flan_jax.model import partitioning
from flan_jax.training import trainer
import flan_tasks  # noqa: F401
from tests.conftest import TINY

MIXTURE, LENGTHS, BATCH, STEPS = "embedded_no_sentiment", {"inputs": 64, "targets": 16}, 4, 5
ARGS = dict(mixture_or_task_name=MIXTURE, task_feature_lengths=LENGTHS, batch_size=BATCH, model_config=TINY,
            checkpoint_period=2, log_every=1, async_checkpointing=False)
RATES = "accounting_test_rates"  # a mixture with unequal rates, one of them a function


def run(model_dir, steps):
  trainer.train(str(model_dir), train_steps=steps, mesh=partitioning.make_mesh(devices=jax.devices()[:1]), **ARGS)


def trained_on(model_dir):
  with open(os.path.join(model_dir, accounting.FILE)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Straight to STEPS; to 3 then resumed; and to 3 with no tally saved (an older run) then resumed."""
  straight, resumed, older = (tmp_path_factory.mktemp(name) for name in ("straight", "resumed", "older"))
  run(straight, STEPS)
  run(resumed, 3)
  shutil.rmtree(older)
  shutil.copytree(resumed, older)
  for root, _, files in os.walk(older / checkpoints.INPUT_POSITIONS):
    for name in files:
      if name in (accounting.FILE, accounting.LOCAL_FILE):
        os.remove(os.path.join(root, name))
  run(resumed, STEPS)
  run(older, STEPS)
  return straight, resumed, older


@pytest.fixture(scope="module")
def rates_mixture():
  seqio.MixtureRegistry.remove(RATES)
  seqio.MixtureRegistry.add(RATES, [("embedded_parity", 1.0), ("embedded_addition", lambda task: 3.0)])
  yield RATES
  seqio.MixtureRegistry.remove(RATES)


def test_target_tokens_per_task_add_up_to_the_logged_target_tokens(runs):
  straight, _, _ = runs
  logged = [json.loads(line) for line in open(straight / "train_metrics.jsonl")]
  assert [m["step"] for m in logged] == list(range(1, STEPS + 1))
  record = trained_on(straight)
  assert record["step"] == STEPS and list(record["tasks"]) == data_lib.task_names(MIXTURE)
  per_task = sum(t["target_tokens"] for t in record["tasks"].values())
  assert per_task == record["totals"]["target_tokens"] == sum(m["target_tokens"] for m in logged)
  assert sum(t["target_tokens"] > 0 for t in record["tasks"].values()) >= 3  # a real mix of tasks


def test_examples_are_the_packed_segments_and_tokens_fill_the_rows(runs):
  straight, _, _ = runs
  totals = trained_on(straight)["totals"]
  batches = data_lib.get_dataset(MIXTURE, LENGTHS, "train", BATCH, seed=0).take(STEPS).as_numpy_iterator()
  segments = tokens = 0
  for b in batches:
    segments += int(b["decoder_segment_ids"].max(axis=1).sum())
    tokens += int((b["decoder_segment_ids"] > 0).sum())
  assert totals["examples"] == segments and totals["tokens"] == tokens
  assert totals["tokens"] + totals["padding_tokens"] == STEPS * BATCH * sum(LENGTHS.values())
  assert totals["rows"] == STEPS * BATCH
  assert totals["packing_efficiency"] == tokens / (STEPS * BATCH * sum(LENGTHS.values()))
  tasks = trained_on(straight)["tasks"].values()
  assert sum(t["examples"] for t in tasks) == segments and sum(t["tokens"] for t in tasks) == tokens
  assert abs(sum(t["example_fraction"] for t in tasks) - 1) < 1e-9
  assert all(t["configured_rate"] == 1 / len(tasks) for t in tasks)  # the mixture's rates are all 1


def test_a_resumed_run_records_what_a_straight_run_does(runs):
  straight, resumed, older = runs
  assert trained_on(resumed) == trained_on(straight)
  assert trained_on(older) == trained_on(straight)  # recounted by reading the batches before step 3
  positions = straight / checkpoints.INPUT_POSITIONS / "process_0"
  assert sorted(int(d) for d in os.listdir(positions)) == [2, 4, 5]
  with open(positions / "4" / accounting.FILE) as f:  # the tally of each kept step, with its position
    at_4 = json.load(f)
  assert at_4["step"] == 4 and at_4["totals"]["rows"] == 4 * BATCH
  assert at_4["totals"]["target_tokens"] < trained_on(straight)["totals"]["target_tokens"]


def test_the_task_index_leaves_the_batches_unchanged_and_names_each_tokens_task():
  plain = data_lib.get_dataset(MIXTURE, LENGTHS, "train", BATCH, seed=3).take(4)
  tagged = data_lib.get_dataset(MIXTURE, LENGTHS, "train", BATCH, seed=3, with_task_index=True).take(4)
  for a, b in zip(plain.as_numpy_iterator(), tagged.as_numpy_iterator(), strict=True):
    task = b.pop(data_lib.TASK_INDEX)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert task.shape == a["decoder_target_tokens"].shape
    assert np.array_equal(task >= 0, a["decoder_segment_ids"] > 0)

  # Every packed example is one of the examples of the task its index names.
  name = "embedded_no_sentiment_clusters1"
  names = data_lib.task_names(name)
  examples = {t: {tuple(np.concatenate([ex["inputs"], ex["targets"]])) for ex in seqio.get_mixture_or_task(t)
                  .get_dataset(LENGTHS, split="train", shuffle=False, use_cached=False).as_numpy_iterator()}
              for t in names}
  checked = 0
  tagged = data_lib.get_dataset(name, LENGTHS, "train", BATCH, seed=0, with_task_index=True)
  for b in tagged.take(2).as_numpy_iterator():
    for segments, task, tokens in zip(b["decoder_segment_ids"], b[data_lib.TASK_INDEX], b["decoder_target_tokens"],
                                      strict=True):
      for s in range(1, segments.max() + 1):
        (index,) = set(task[segments == s])
        assert tuple(tokens[segments == s]) in examples[names[index]]
        checked += 1
  assert checked >= 6

  one_task = next(data_lib.get_dataset("embedded_parity", LENGTHS, "train", BATCH, with_task_index=True)
                  .as_numpy_iterator())
  assert set(np.unique(one_task[data_lib.TASK_INDEX])) <= {-1, 0}


def test_configured_rates_are_the_mixtures_normalised_and_counts_follow_the_segments(rates_mixture):
  assert accounting.configured_rates(rates_mixture) == {"embedded_addition": 0.75, "embedded_parity": 0.25}
  assert accounting.configured_rates("embedded_parity") == {"embedded_parity": 1.0}
  tally = accounting.Tally(rates_mixture)
  batch = {data_lib.TASK_INDEX: np.array([[0, 0, 0, 1, 1, -1], [1, 1, 1, 1, -1, -1]]),
           "decoder_positions": np.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]]),
           "decoder_loss_weights": np.array([[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]])}
  assert tally.count(batch).keys() == {"decoder_positions", "decoder_loss_weights"}  # what the model gets
  summary = tally.summary(step=1)
  assert summary["tasks"]["embedded_addition"] == {
      "index": 0, "configured_rate": 0.75, "examples": 1, "tokens": 3, "target_tokens": 2,
      "example_fraction": 1 / 3, "token_fraction": 3 / 9, "target_token_fraction": 2 / 5}
  assert summary["totals"] == {"rows": 2, "examples": 3, "tokens": 9, "target_tokens": 5, "padding_tokens": 3,
                               "packing_efficiency": 9 / 12}


def test_counts_are_summed_over_processes_without_overflow(monkeypatch):
  values = np.array([0, 5, 2**31 - 1, 2**31, 2**40 + 7, 3 * 2**50], np.int64)
  monkeypatch.setattr(accounting.jax, "process_count", lambda: 2)
  # The other process holds the same counts in reverse order.
  monkeypatch.setattr(accounting.multihost_utils, "process_allgather", lambda x: np.stack([x, x[:, ::-1]]))
  assert accounting._sum_over_processes(values).tolist() == (values + values[::-1]).tolist()
