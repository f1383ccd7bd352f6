"""The 2021 FLAN collection's datasets, every cluster's in one tuple (the order the catalogue lists them in)."""

import itertools

from flan_tasks.flan import (
  closed_book,
  commonsense,
  misc,
  nli,
  paraphrase,
  reading,
  sentiment,
  struct_to_text,
  summarization,
  translation,
)
from flan_tasks.flan import dataset as dataset_lib

DATASETS: tuple[dataset_lib.FlanDataset, ...] = tuple(itertools.chain(
    nli.DATASETS, reading.DATASETS, closed_book.DATASETS, commonsense.DATASETS,
    sentiment.DATASETS, paraphrase.DATASETS, struct_to_text.DATASETS, translation.DATASETS,
    summarization.DATASETS, misc.DATASETS))
