"""Tests for flan_jax/data/pipeline.py: the saved input position continues exactly where a run stopped."""

import os

import numpy as np

from flan_jax.data import pipeline as data_lib
import flan_tasks  # noqa: F401  (registers the embedded tasks)

TASK, LENGTHS = "embedded_no_topic", {"inputs": 64, "targets": 16}


def _dataset(skip=0):
  return data_lib.get_dataset(TASK, LENGTHS, "train", 4, seed=3, skip_batches=skip)


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_restored_position_gives_the_batches_of_an_uninterrupted_run(tmp_path):
  straight = data_lib.InputIterator(_dataset(), str(tmp_path / "unused"))
  expected = [next(straight) for _ in range(9)]
  first = data_lib.InputIterator(_dataset(), str(tmp_path))
  for _ in range(6):
    next(first)
  first.save(6)
  resumed = data_lib.InputIterator(_dataset(), str(tmp_path))
  assert resumed.restore(6)
  assert all(_equal(next(resumed), want) for want in expected[6:])
  skipped = data_lib.InputIterator(_dataset(skip=6), str(tmp_path / "unused"))  # the O(steps) way agrees
  assert _equal(next(skipped), expected[6])


def test_no_saved_position_is_reported_and_saving_keeps_only_the_given_steps(tmp_path):
  inputs = data_lib.InputIterator(_dataset(), str(tmp_path))
  assert not inputs.restore(4)
  os.makedirs(tmp_path / "process_0" / "0.tmp-1")  # a write cut short by a kill or a full disk
  for step in (1, 2, 3):
    next(inputs)
    inputs.save(step, keep={1})
  assert sorted(os.listdir(tmp_path / "process_0")) == ["1", "3"]
