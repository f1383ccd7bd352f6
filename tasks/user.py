"""Registering your own TFDS-backed instruction task or mixture, from Python or from gin.

    from flan_tasks import user
    user.tfds_task("my_rte", "super_glue/rte:1.0.2",
                   templates=["{premise}\\nDoes this imply \\"{hypothesis}\\"?\\n{options_}"],
                   fields={"premise": "premise", "hypothesis": "hypothesis"},
                   answer="label", options=["yes", "no"])
    user.mixture("my_mix", ["my_rte", "flan_cb"])
"""

import functools
from typing import Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from flan_jax import task_info
from flan_tasks import files, instruction
from flan_tasks.flan import features
from flan_tasks.flan import mixtures as flan_mixtures
from flan_tasks.templates import ANSWER_FIELD, OPTIONS_FIELD

# Weights by example count, capped as the FLAN mixtures are (mixtures.MAX_RATE).
RATE_BY_EXAMPLES = flan_mixtures.RATE


def _feature(example, path: str):
  """`example["a"]["b"]` for the path "a/b"."""
  for key in path.split("/"):
    example = example[key]
  return example


def _to_fields(ex, fields, answer, options):
  out = {name: _feature(ex, path) for name, path in fields.items()}
  value = _feature(ex, answer)
  if options:
    out[OPTIONS_FIELD] = tf.constant(list(options))
    out[ANSWER_FIELD] = features.pick(list(options), value)
  else:
    out[ANSWER_FIELD] = features.first(value) if value.shape.rank else value
  return out


@gin.configurable(module="flan_tasks.user")
def tfds_task(name: str, tfds_name: str, templates: Sequence[files.TemplateLike],
              fields: Mapping[str, str], answer: str, options: Optional[Sequence[str]] = None,
              splits: Optional[Mapping[str, str]] = None, metrics: Sequence[str] = ("accuracy",),
              cluster: str = "user", delimiter: Optional[str] = None, stop: Sequence[str] = ()) -> str:
  """Registers an instruction task over a TFDS dataset ("name[/config]:version"); returns its name.

  `fields` maps template field names to feature paths ("question/stem"); `answer` is the
  feature holding the target text, or a class label when `options` (the label texts, in label
  order) is given. `splits` maps seqio splits to TFDS splits or slices; `delimiter` and `stop` as
  in `files.file_task`.
  """
  source = seqio.TfdsDataSource(
      tfds_name, splits=dict(splits or {"train": "train", "validation": "validation"}))
  template_fields = tuple(fields) + (ANSWER_FIELD,) + ((OPTIONS_FIELD,) if options else ())
  for task in (name, task_info.eval_task(name), task_info.scoring_task(name)):
    seqio.TaskRegistry.remove(task)
  instruction.register(instruction.InstructionDataset(
      name=name, cluster=cluster, source=source, fields=template_fields,
      templates=files.templates_of(templates),
      to_fields=functools.partial(_to_fields, fields=dict(fields), answer=answer,
                                  options=tuple(options or ())),
      metric_fns=tuple(files.METRICS[m] for m in metrics), delimiter=delimiter, stop=tuple(stop)))
  return name


@gin.configurable(module="flan_tasks.user")
def mixture(name: str, tasks: Sequence[str], rate: Union[str, float] = "examples") -> str:
  """Registers a mixture of existing tasks/mixtures; `rate` "examples" weights by example count
  (at most 3,000, as the FLAN mixtures do), a number gives every task the same weight."""
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(tasks),
                            default_rate=RATE_BY_EXAMPLES if rate == "examples" else float(rate))
  return name
