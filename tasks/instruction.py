"""Turns a dataset plus instruction templates into registered seqio Tasks.

`register` adds `NAME` (training), `NAME_eval` (generative, answer templates mixed), `NAME_scoring`
(rank classification, with options) and their one-template variants `NAME_eval_tI`/`NAME_scoring_tI`.
"""

import dataclasses
import functools
import operator
from typing import Callable, Mapping, Optional, Sequence

import seqio
from t5.data import postprocessors as t5_post
from t5.data import preprocessors as t5_pre
from t5.evaluation import metrics as t5_metrics
import tensorflow as tf

from flan_jax import task_info
from flan_jax.text import formats
from flan_tasks import templates as templates_lib
from flan_tasks.vocab import output_features

TEMPLATE_SEED = 0  # the seed of the per-example template choice


@dataclasses.dataclass(frozen=True)
class InstructionDataset:
  """A dataset phrased through instruction templates.

  `to_fields` maps a raw example to a dict of string features: every field the templates
  name, `answer` (the target text) and, for classification, `options` (a 1-D string tensor
  that contains the answer).
  """
  name: str
  cluster: str
  source: seqio.DataSource
  fields: Sequence[str]
  templates: Sequence[templates_lib.Template]
  to_fields: Optional[Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]] = None
  metric_fns: Sequence[Callable] = (t5_metrics.accuracy,)
  filter_fn: Optional[Callable[[Mapping[str, tf.Tensor]], tf.Tensor]] = None  # keep if True
  delimiter: Optional[str] = None  # between prompt and target where a template sets none (None: the rule)
  stop: Sequence[str] = ()  # strings that end a decoded answer (the first one found cuts it)
  shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE  # per task, of rendered and tokenized examples

  @property
  def has_options(self) -> bool:
    return templates_lib.OPTIONS_FIELD in self.fields

  @property
  def answer_templates(self) -> tuple[templates_lib.Template, ...]:
    """The templates that ask for the answer (not those that turn the task around)."""
    return tuple(t for t in self.templates if t.asks_for_answer)


def _fields(ex, to_fields):
  return dict(to_fields(ex)) if to_fields else dict(ex)


def _format(ex, to_fields, templates, seed, delimiter):
  ex = templates_lib.apply_random_template(_fields(ex, to_fields), templates, seed, delimiter)
  return {k: ex[k] for k in ("inputs", "targets", formats.DELIMITER)}


def add_example_ids(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Adds `example_id`: the example's position in the split as read (unshuffled, filtered)."""
  return ds.enumerate().map(lambda i, ex: dict(ex, **{task_info.EXAMPLE_ID: i}),
                            num_parallel_calls=tf.data.AUTOTUNE)


def _rank_classification(ds, to_fields, templates, seed, delimiter):
  """One example per option: the chosen template's input, and the option as the answer.

  t5 numbers the source examples in order: `idx` is [example_id, option index].
  """

  def expand(ex):
    example_id = ex.pop(task_info.EXAMPLE_ID)
    ex = _fields(ex, to_fields)
    index = templates_lib.choose_template(ex, len(templates), seed)
    options = ex[templates_lib.OPTIONS_FIELD]
    as_options = dict(ex, answer=options)
    prompts = [templates_lib.render(t.inputs, ex) for t in templates]
    targets = tf.stack([templates_lib.render(t.targets, as_options) for t in templates])
    return {
        "inputs": tf.fill(tf.shape(options), tf.gather(tf.stack(prompts), index)),
        "targets": tf.gather(targets, index),
        "is_correct": tf.equal(options, ex[templates_lib.ANSWER_FIELD]),
        task_info.EXAMPLE_ID: example_id,
        formats.DELIMITER: tf.gather(templates_lib.delimiters(templates, prompts, delimiter), index),
    }

  ds = add_example_ids(ds).map(expand, num_parallel_calls=tf.data.AUTOTUNE)
  return t5_pre.rank_classification(
      ds, inputs_fn=operator.itemgetter("inputs"), targets_fn=operator.itemgetter("targets"),
      is_correct_fn=operator.itemgetter("is_correct"),
      passthrough_feature_keys=[task_info.EXAMPLE_ID, formats.DELIMITER])


def _filtered(dataset: InstructionDataset) -> list[Callable]:
  if dataset.filter_fn is None:
    return []
  return [lambda ds: ds.filter(dataset.filter_fn)]


def _formatter(dataset: InstructionDataset, templates, seed: int) -> Callable:
  return seqio.map_over_dataset(functools.partial(
      _format, to_fields=dataset.to_fields, templates=tuple(templates), seed=seed,
      delimiter=dataset.delimiter))


def _record(name: str, dataset: InstructionDataset, template: Optional[int], kind: str) -> str:
  task_info.register(name, dataset=dataset.name, cluster=dataset.cluster, template=template,
                     kind=kind)
  formats.set_stop_strings(name, dataset.stop)
  return name


def add_generative_task(name: str, dataset: InstructionDataset,
                        templates: Sequence[templates_lib.Template], seed: int = TEMPLATE_SEED,
                        metric_fns: Optional[Sequence[Callable]] = None, *,
                        template: Optional[int] = None, kind: str = "generative") -> str:
  """A task rendering each example with one seeded-random template out of `templates`.

  `template` (the index of the one template used, if one) and `kind` go to task_info; a
  "generative" (evaluation) task numbers its examples (`example_id`), a "train" task does not.
  """
  numbered = [add_example_ids] if kind == "generative" else []
  tokenize = formats.preprocessor("generate" if kind == "generative" else "train")
  seqio.TaskRegistry.add(
      name,
      source=dataset.source,
      preprocessors=(_filtered(dataset) + [_formatter(dataset, templates, seed)] + numbered
                     + [tokenize]),
      output_features=output_features(),
      metric_fns=list(dataset.metric_fns if metric_fns is None else metric_fns),
      shuffle_buffer_size=dataset.shuffle_buffer_size,
  )
  return _record(name, dataset, template, kind)


def add_scoring_task(name: str, dataset: InstructionDataset,
                     templates: Sequence[templates_lib.Template], seed: int = TEMPLATE_SEED, *,
                     template: Optional[int] = None) -> str:
  """A rank-classification task: every option is scored as the target of the chosen template."""
  seqio.TaskRegistry.add(
      name,
      source=dataset.source,
      preprocessors=_filtered(dataset) + [
          functools.partial(_rank_classification, to_fields=dataset.to_fields,
                            templates=tuple(templates), seed=seed, delimiter=dataset.delimiter),
          formats.preprocessor("score")],
      output_features=output_features(),
      postprocess_fn=t5_post.rank_classification,
      metric_fns=[t5_metrics.rank_classification],
      shuffle_buffer_size=dataset.shuffle_buffer_size,
  )
  return _record(name, dataset, template, "scoring")


def add_fewshot_task(name: str, dataset: InstructionDataset, template: templates_lib.Template,
                     num_shots: int, seed: int = TEMPLATE_SEED) -> str:
  """`num_shots` rendered training examples (same dataset, same template) before the query."""
  formatting = _filtered(dataset) + [_formatter(dataset, [template], seed)]
  source = seqio.experimental.FewshotDataSource(
      dataset.source, num_shots=num_shots, train_preprocessors=formatting,
      eval_preprocessors=formatting + [add_example_ids], eval_on_fixed_exemplars=True)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          functools.partial(seqio.experimental.fewshot_preprocessor, targets_prefix="\n",
                            example_separator="\n\n"),
          formats.preprocessor("generate"),
      ],
      output_features=output_features(),
      metric_fns=list(dataset.metric_fns),
      shuffle_buffer_size=dataset.shuffle_buffer_size,
  )
  index = list(dataset.templates).index(template) if template in dataset.templates else None
  return _record(name, dataset, index, "generative")


def answer_indices(dataset: InstructionDataset) -> list[int]:
  """The indices (in `dataset.templates`) of the templates that ask for the answer."""
  return [i for i, t in enumerate(dataset.templates) if t.asks_for_answer]


def plan(dataset: InstructionDataset) -> dict[str, task_info.TaskInfo]:
  """Every task `register` adds for the dataset, in order, and what it evaluates."""
  def info(template, kind):
    return task_info.TaskInfo(dataset.name, dataset.cluster, template, kind)

  kinds = [("generative", task_info.eval_task)]
  if dataset.has_options:
    kinds.append(("scoring", task_info.scoring_task))
  out = {dataset.name: info(None, "train")}
  out.update({suffixed(dataset.name): info(None, kind) for kind, suffixed in kinds})
  for kind, suffixed in kinds:
    out.update({suffixed(dataset.name, i): info(i, kind) for i in answer_indices(dataset)})
  return out


def _templates_for(dataset: InstructionDataset, info: task_info.TaskInfo):
  if info.kind == "train":
    return dataset.templates
  if info.template is None:
    return dataset.answer_templates
  return [dataset.templates[info.template]]


def _unregister(dataset: InstructionDataset) -> None:
  """Drops what an earlier `register` of a dataset of the same name added."""
  for name in task_info.tasks_of(dataset.name):
    if task_info.fallback(name).dataset == dataset.name:
      seqio.TaskRegistry.remove(name)
      task_info.remove(name)


def register(dataset: InstructionDataset, seed: int = TEMPLATE_SEED) -> list[str]:
  """Registers the tasks of `plan(dataset)` with seqio and task_info (replacing an earlier
  registration of the same dataset); returns their names."""
  check(dataset)
  _unregister(dataset)
  planned = plan(dataset)
  for name, info in planned.items():
    templates = _templates_for(dataset, info)
    if info.kind == "scoring":
      add_scoring_task(name, dataset, templates, seed, template=info.template)
    else:
      add_generative_task(name, dataset, templates, seed, template=info.template, kind=info.kind)
  return list(planned)


def check(dataset: InstructionDataset) -> None:
  """Raises TemplateError when a template names a missing field or none asks for the answer."""
  templates_lib.validate(dataset.name, dataset.templates, dataset.fields)
  formats.check_delimiter(dataset.delimiter, f"task {dataset.name}")
  if not dataset.answer_templates:
    raise templates_lib.TemplateError(
        f"task {dataset.name}: needs at least one template whose target is {{answer}}")
