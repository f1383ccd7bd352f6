"""A FLAN dataset definition (TFDS source, splits, fields, templates) and its registration.

Splits follow the paper's recipe: training is capped at 30,000 examples; a small carve-out at the
start of the TFDS training split is the `validation` split (for choosing templates), disjoint from
what is trained on; the official validation split (or test, when there is none) is `test`.
"""

import dataclasses
import functools
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from flan_jax import task_info
from flan_tasks import instruction, metrics
from flan_tasks import templates as templates_lib
from flan_tasks.flan import clusters
from flan_tasks.templates import Template, TemplateError

PREFIX = "flan_"
TRAIN_CAP = 30_000
MAX_CARVE_OUT = 500
TEMPLATE_COUNTS = (1, 2, 4, 7, 10)  # the templates-per-dataset ablation; 10 is the default
FEWSHOT_SHOTS = 3
NUM_TEMPLATES = 10
MAX_TURNED_AROUND = 3


@dataclasses.dataclass(frozen=True)
class FlanDataset:
  """One dataset of the collection.

  `tfds` is "name[/config]:version"; `train_size` is the size of the TFDS training split from
  the TFDS catalogue (kept here because split sizes are not known offline before download);
  `test_split` is the official held-out split, or None to carve the test split out of training
  data too. `manual` says why the dataset needs a manual download; such datasets are registered
  but left out of the mixtures.
  """
  name: str
  cluster: str
  paper_name: str
  tfds: str
  train_size: int
  to_fields: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]
  fields: Sequence[str]
  templates: Sequence[Template]
  metric_fns: Sequence[Callable] = metrics.CLASSIFICATION
  train_split: str = "train"
  test_split: Optional[str] = "validation"
  filter_fn: Optional[Callable] = None
  manual: str = ""

  @property
  def task(self) -> str:
    return PREFIX + self.name

  @property
  def carve_out(self) -> int:
    """Size of the validation carve-out: 500, or a tenth of small training splits."""
    return max(1, min(MAX_CARVE_OUT, self.train_size // 10))

  @property
  def in_mixtures(self) -> bool:
    return not self.manual

  def split_map(self) -> dict[str, str]:
    """seqio split name -> TFDS split slice. Slices of the train split never overlap."""
    n = self.carve_out
    start = n if self.test_split else 2 * n
    # TFDS rejects a slice that runs past the split's end: small splits are read to the end.
    stop = "" if self.train_size - start <= TRAIN_CAP else start + TRAIN_CAP
    splits = {"train": f"{self.train_split}[{start}:{stop}]",
              "validation": f"{self.train_split}[:{n}]"}
    splits["test"] = self.test_split or f"{self.train_split}[{n}:{2 * n}]"
    return splits

  def sizes(self) -> dict[str, Optional[int]]:
    start = self.carve_out if self.test_split else 2 * self.carve_out
    return {"train": max(0, min(self.train_size - start, TRAIN_CAP)),
            "validation": self.carve_out,
            "test": None if self.test_split else self.carve_out}


class CappedTfdsSource(seqio.TfdsDataSource):
  """A TfdsDataSource whose example counts come from the definition, not from TFDS metadata.

  This keeps `seqio.mixing_rate_num_examples` exact and offline (before any download).
  """

  def __init__(self, tfds_name: str, splits: Mapping[str, str], sizes: Mapping[str, Optional[int]]):
    super().__init__(tfds_name, splits=dict(splits))
    self._sizes = dict(sizes)

  def num_input_examples(self, split: str) -> Optional[int]:
    return self._sizes.get(split)

  def list_shards(self, split: str) -> Sequence[str]:
    try:
      return super().list_shards(split)
    except KeyError:  # not prepared yet (or mocked): TFDS has no file list; one logical shard
      return [split]


def source(dataset: FlanDataset) -> CappedTfdsSource:
  return CappedTfdsSource(dataset.tfds, dataset.split_map(), dataset.sizes())


def instruction_dataset(dataset: FlanDataset, templates: Sequence[Template] = None,
                        name: str = None) -> instruction.InstructionDataset:
  return instruction.InstructionDataset(
      name=name or dataset.task, cluster=dataset.cluster, source=source(dataset),
      fields=tuple(dataset.fields), templates=tuple(templates or dataset.templates),
      to_fields=dataset.to_fields, metric_fns=tuple(dataset.metric_fns),
      filter_fn=dataset.filter_fn)


def check(dataset: FlanDataset) -> None:
  """The collection's own rules on top of field validation: 10 templates, at most 3 turned
  around, and classification templates that end with the options list."""
  base = instruction_dataset(dataset)
  instruction.check(base)
  if len(dataset.templates) != NUM_TEMPLATES:
    raise TemplateError(f"task {dataset.task}: has {len(dataset.templates)} templates, "
                        f"wants {NUM_TEMPLATES}")
  turned = len(dataset.templates) - len(base.answer_templates)
  if turned > MAX_TURNED_AROUND:
    raise TemplateError(f"task {dataset.task}: {turned} templates turn the task around, "
                        f"at most {MAX_TURNED_AROUND} may")
  if base.has_options:
    for i, template in enumerate(dataset.templates):
      if template.asks_for_answer and not template.inputs.endswith("{options_}"):
        raise TemplateError(f"task {dataset.task}: template {i} asks for the answer but does "
                            "not end with {options_}")


def raw_template(dataset: FlanDataset, prefix: str = "") -> Template:
  """The no-instruction format: the input fields one a line (plus the options list)."""
  return templates_lib.raw_template(dataset.templates, "options" in dataset.fields, prefix)


def name_template(dataset: FlanDataset) -> Template:
  """The dataset-name format: "[Cluster: Dataset] " before the raw inputs."""
  title = clusters.TITLES[dataset.cluster]
  return raw_template(dataset, prefix=f"[{title}: {dataset.paper_name}] ")


def _ablations(dataset: FlanDataset) -> dict[str, list[Template]]:
  """Training task name -> its templates, for the paper's format and template-count ablations."""
  out = {f"{dataset.task}_templates{k}": list(dataset.templates[:k]) for k in TEMPLATE_COUNTS[:-1]}
  out[f"{dataset.task}_notemplate"] = [raw_template(dataset)]
  out[f"{dataset.task}_datasetname"] = [name_template(dataset)]
  return out


def _fewshot_task(dataset: FlanDataset) -> str:
  return f"{dataset.task}_{FEWSHOT_SHOTS}shot"


# The groups of `task_names`, in order.
TASK_GROUPS = ("train", "eval", "eval_per_template", "ablation", "fewshot")
# How a task is added: a function of the dataset's InstructionDataset that registers the task
# and returns its name, or None for the tasks `instruction.register` adds all together.
_Adder = Optional[Callable[[instruction.InstructionDataset], str]]


def _group(info: task_info.TaskInfo) -> str:
  if info.kind == "train":
    return "train"
  return "eval" if info.template is None else "eval_per_template"


def _add_ablation(name: str, templates: Sequence[Template],
                  base: instruction.InstructionDataset) -> str:
  return instruction.add_generative_task(name, base, templates, kind="train")


def _add_fewshot(name: str, base: instruction.InstructionDataset) -> str:
  return instruction.add_fewshot_task(name, base, base.answer_templates[0], FEWSHOT_SHOTS)


def _plan(dataset: FlanDataset,
          base: instruction.InstructionDataset) -> list[tuple[str, str, _Adder]]:
  """(group, task name, how it is added) for every task of the dataset, in registration order.

  The single list both `task_names` and `register` read, so the two cannot drift apart.
  """
  out = [(_group(info), name, None) for name, info in instruction.plan(base).items()]
  for name, templates in _ablations(dataset).items():
    out.append(("ablation", name, functools.partial(_add_ablation, name, templates)))
  fewshot = _fewshot_task(dataset)
  out.append(("fewshot", fewshot, functools.partial(_add_fewshot, fewshot)))
  return out


def task_names(dataset: FlanDataset) -> dict[str, list[str]]:
  """Every task name `register` gives the dataset, by group (see TASK_GROUPS)."""
  names = {group: [] for group in TASK_GROUPS}
  for group, name, _ in _plan(dataset, instruction_dataset(dataset)):
    names[group].append(name)
  return names


def register(dataset: FlanDataset) -> list[str]:
  """Registers all of a dataset's tasks (those of `task_names`); returns their names."""
  check(dataset)
  base = instruction_dataset(dataset)
  names = instruction.register(base)  # the tasks planned without an adder of their own
  for _, name, add in _plan(dataset, base):
    if add is not None:
      names.append(add(base))
  return names
