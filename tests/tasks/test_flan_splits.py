"""The FLAN split recipe as TFDS reads it: the validation carve-out, the carved test split and
the capped training split resolve to disjoint example ranges of the training split."""

import types

import pytest
import tensorflow_datasets as tfds

from flan_tasks import flan
from flan_tasks.flan import dataset as dataset_lib


def _ranges(d, train_size):
  """seqio split -> (first, last+1) example indices of the TFDS training split."""
  out = {}
  for split, spec in d.split_map().items():
    sizes = {d.train_split: train_size, d.test_split or "-": 7}
    infos = {name: types.SimpleNamespace(num_examples=n) for name, n in sizes.items()}
    (absolute,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
    if absolute.splitname == d.train_split:
      out[split] = (absolute.from_ or 0, train_size if absolute.to is None else absolute.to)
  return out


@pytest.mark.parametrize("carve_test", [True, False])
def test_carve_out_on_a_small_split(monkeypatch, carve_test):
  monkeypatch.setattr(dataset_lib, "TRAIN_CAP", 50)
  base = flan.by_name("cb")
  d = dataset_lib.FlanDataset(**{**base.__dict__, "train_size": 100,
                                 "test_split": None if carve_test else "validation"})
  ranges = _ranges(d, 100)
  assert set(ranges) == ({"train", "validation", "test"} if carve_test else {"train", "validation"})
  assert ranges["validation"] == (0, 10) == (0, d.carve_out)
  assert ranges["train"][1] - ranges["train"][0] == 50 == d.sizes()["train"]
  spans = sorted(ranges.values())
  for (_, stop), (start, _) in zip(spans, spans[1:]):
    assert stop <= start


def test_every_dataset_resolves_to_disjoint_capped_ranges():
  for d in flan.DATASETS:
    ranges = _ranges(d, d.train_size)
    train = ranges["train"]
    assert train[1] - train[0] == d.sizes()["train"] <= 30_000, d.name
    spans = sorted(ranges.values())
    for (_, stop), (start, _) in zip(spans, spans[1:]):
      assert stop <= start, d.name
