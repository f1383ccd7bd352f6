"""The FLAN collection: 12 clusters of TFDS datasets, their tasks and mixtures.

`register_all()` registers everything with seqio (idempotent), and with it the Flan 2022 recipe's
chain-of-thought (cot.py) and Super-NaturalInstructions (niv2.py) sub-mixtures. It only builds seqio objects:
no TFDS builder is read until a task's data is, so it is cheap enough to run on import.
"""

from flan_tasks.flan import cot, mixtures, niv2
from flan_tasks.flan import dataset as dataset_lib
from flan_tasks.flan.collection import DATASETS

_registered = False


def register_all() -> None:
  global _registered
  if _registered:
    return
  _registered = True
  for d in DATASETS:
    dataset_lib.register(d)
  mixtures.register_all(DATASETS)
  cot.register_all()  # Flan 2022's chain-of-thought and Super-NaturalInstructions sub-mixtures
  niv2.register_all()


def by_name(name: str) -> dataset_lib.FlanDataset:
  """The dataset called `name` (with or without the flan_ prefix)."""
  name = name.removeprefix(dataset_lib.PREFIX)
  for d in DATASETS:
    if d.name == name:
      return d
  raise KeyError(f"no FLAN dataset {name!r}")
