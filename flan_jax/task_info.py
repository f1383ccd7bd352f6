"""What each task evaluates (dataset, cluster, template, kind), and the task-name suffixes.

Importing `tasks` fills the registry; it needs no TensorFlow, seqio or JAX, so readers stay light.
"""

import dataclasses
import re
from typing import Optional

KINDS = ("train", "generative", "scoring")
EVAL = "_eval"
SCORING = "_scoring"
UNKNOWN_CLUSTER = "unknown"
# The integer feature that numbers an evaluation task's examples: the source example's position
# in the unshuffled split, the same in every template of a dataset (scoring tasks: also idx[0]).
EXAMPLE_ID = "example_id"
_SUFFIX = re.compile(rf"(?:{EVAL}|{SCORING})(?:_t(\d+))?$")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """The lineage of a task. `template` is the template's index among the dataset's templates,
  or None when the task mixes templates."""
  dataset: str
  cluster: str
  template: Optional[int]
  kind: str  # one of KINDS


_registry: dict[str, TaskInfo] = {}


def _with_suffix(name: str, suffix: str, template: Optional[int]) -> str:
  return name + suffix + ("" if template is None else f"_t{template}")


def eval_task(name: str, template: Optional[int] = None) -> str:
  """The generative evaluation task of dataset `name`: NAME_eval, or NAME_eval_t3 for template 3."""
  return _with_suffix(name, EVAL, template)


def scoring_task(name: str, template: Optional[int] = None) -> str:
  """The rank-classification task of dataset `name`: NAME_scoring, or NAME_scoring_t3."""
  return _with_suffix(name, SCORING, template)


def register(task_name: str, *, dataset: str, cluster: str, template: Optional[int],
             kind: str) -> TaskInfo:
  """Records (or replaces) what `task_name` evaluates; returns the record."""
  if kind not in KINDS:
    raise ValueError(f"task {task_name}: kind {kind!r} is not one of {KINDS}")
  if template is not None and (isinstance(template, bool) or not isinstance(template, int)
                               or template < 0):
    raise ValueError(f"task {task_name}: template must be a template index or None, "
                     f"got {template!r}")
  info = TaskInfo(dataset=dataset, cluster=cluster, template=template, kind=kind)
  _registry[task_name] = info
  return info


def remove(task_name: str) -> None:
  """Forgets `task_name` (no error if it was never registered)."""
  _registry.pop(task_name, None)


def tasks_of(dataset: str) -> list[str]:
  """The registered tasks of `dataset`, in registration order."""
  return [name for name, info in _registry.items() if info.dataset == dataset]


def lookup(task_name: str) -> TaskInfo:
  """The registered record, or one guessed from the name for a task nobody registered."""
  return _registry.get(task_name) or fallback(task_name)


def fallback(task_name: str) -> TaskInfo:
  """NAME_eval / NAME_scoring / NAME_eval_t3 / NAME_scoring_t3 -> dataset NAME (template 3)."""
  match = _SUFFIX.search(task_name)
  dataset = task_name[:match.start()] if match else task_name
  template = int(match.group(1)) if match and match.group(1) else None
  kind = "scoring" if SCORING in task_name else "generative"
  return TaskInfo(dataset=dataset, cluster=UNKNOWN_CLUSTER, template=template, kind=kind)
