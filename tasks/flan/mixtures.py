"""The FLAN mixtures: everything, leave-one-cluster-out training with its evaluation mixtures
(templates mixed, and one task per template), and the paper's ablations.

Training mixtures weight each task by its (capped) number of training examples, at most 3,000.
Datasets that need a manual download are registered as tasks but left out of every mixture.
"""

import functools
from typing import Iterable, Sequence

import seqio

from flan_tasks.flan import clusters
from flan_tasks.flan.dataset import PREFIX, TEMPLATE_COUNTS, FlanDataset, task_names

MAX_RATE = 3_000
RATE = functools.partial(seqio.mixing_rate_num_examples, maximum=MAX_RATE)
ABLATIONS = ("notemplate", "datasetname") + tuple(f"templates{k}" for k in TEMPLATE_COUNTS[:-1])


def train_tasks(datasets: Sequence[FlanDataset], cluster_names: Iterable[str],
                variant: str = "") -> list[str]:
  """Training task names of the (mixable) datasets in the given clusters."""
  wanted = set(cluster_names)
  suffix = f"_{variant}" if variant else ""
  return [d.task + suffix for d in datasets if d.in_mixtures and d.cluster in wanted]


def eval_tasks(datasets: Sequence[FlanDataset], cluster_names: Iterable[str],
               kind: str = "eval") -> list[str]:
  """Generative and rank-classification evaluation tasks of the given clusters: templates mixed
  ("eval"), or one task per answer template ("eval_per_template")."""
  wanted = set(cluster_names)
  return [name for d in datasets if d.in_mixtures and d.cluster in wanted
          for name in task_names(d)[kind]]


def definitions(datasets: Sequence[FlanDataset]) -> dict[str, tuple[list[str], bool]]:
  """Mixture name -> (task names, whether rates are by example count). Order is stable."""
  out = {f"{PREFIX}all": (train_tasks(datasets, clusters.CLUSTERS), True)}
  for name in ("all",) + tuple(clusters.CLUSTERS):
    wanted = clusters.CLUSTERS if name == "all" else [name]
    out[f"{PREFIX}eval_{name}"] = (eval_tasks(datasets, wanted), False)
    out[f"{PREFIX}eval_{name}_templates"] = (eval_tasks(datasets, wanted, "eval_per_template"),
                                             False)
  for cluster in clusters.CLUSTERS:
    kept = clusters.training_clusters(cluster)
    out[f"{PREFIX}no_{cluster}"] = (train_tasks(datasets, kept), True)
    for variant in ABLATIONS:
      out[f"{PREFIX}no_{cluster}_{variant}"] = (train_tasks(datasets, kept, variant), True)
  for k in range(1, len(clusters.ABLATION_ORDER) + 1):
    out[f"{PREFIX}clusters{k}"] = (train_tasks(datasets, clusters.ABLATION_ORDER[:k]), True)
  return out


def register_all(datasets: Sequence[FlanDataset]) -> list[str]:
  names = []
  for name, (tasks, by_size) in definitions(datasets).items():
    seqio.MixtureRegistry.add(name, tasks, default_rate=RATE if by_size else 1.0)
    names.append(name)
  return names
