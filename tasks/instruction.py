"""Turns a dataset plus instruction templates into registered seqio Tasks.

For a dataset `NAME` this registers `NAME` for training (one seeded-random template per example,
from all templates), `NAME_eval` (the same over the templates whose target is the answer, scored
on decoded text) and, when the dataset has an options list, `NAME_scoring` (rank classification:
the log-likelihood of every option as the target; the likeliest counts as the prediction).
"""

import dataclasses
import functools
import operator
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf
from t5.data import postprocessors as t5_post
from t5.data import preprocessors as t5_pre
from t5.evaluation import metrics as t5_metrics

from tasks import templates as templates_lib
from tasks.vocab import output_features

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

  @property
  def has_options(self) -> bool:
    return templates_lib.OPTIONS_FIELD in self.fields

  @property
  def answer_templates(self) -> tuple[templates_lib.Template, ...]:
    """The templates that ask for the answer (not those that turn the task around)."""
    return tuple(t for t in self.templates if t.asks_for_answer)


def _fields(ex, to_fields):
  return dict(to_fields(ex)) if to_fields else dict(ex)


def _format(ex, to_fields, templates, seed):
  ex = templates_lib.apply_random_template(_fields(ex, to_fields), templates, seed)
  return {"inputs": ex["inputs"], "targets": ex["targets"]}


def _rank_classification(ds, to_fields, templates, seed):
  """One example per option: the chosen template's input, and the option as the answer."""

  def expand(ex):
    ex = _fields(ex, to_fields)
    index = templates_lib.choose_template(ex, len(templates), seed)
    options = ex[templates_lib.OPTIONS_FIELD]
    as_options = dict(ex, answer=options)
    inputs = tf.stack([templates_lib.render(t.inputs, ex) for t in templates])
    targets = tf.stack([templates_lib.render(t.targets, as_options) for t in templates])
    return {
        "inputs": tf.fill(tf.shape(options), tf.gather(inputs, index)),
        "targets": tf.gather(targets, index),
        "is_correct": tf.equal(options, ex[templates_lib.ANSWER_FIELD]),
    }

  ds = ds.map(expand, num_parallel_calls=tf.data.AUTOTUNE)
  return t5_pre.rank_classification(
      ds, inputs_fn=operator.itemgetter("inputs"), targets_fn=operator.itemgetter("targets"),
      is_correct_fn=operator.itemgetter("is_correct"))


def _filtered(dataset: InstructionDataset) -> list[Callable]:
  if dataset.filter_fn is None:
    return []
  return [lambda ds: ds.filter(dataset.filter_fn)]


def _formatter(dataset: InstructionDataset, templates, seed: int) -> Callable:
  return seqio.map_over_dataset(functools.partial(
      _format, to_fields=dataset.to_fields, templates=tuple(templates), seed=seed))


_TOKENIZE = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]


def add_generative_task(name: str, dataset: InstructionDataset,
                        templates: Sequence[templates_lib.Template], seed: int = TEMPLATE_SEED,
                        metric_fns: Optional[Sequence[Callable]] = None) -> str:
  """A task rendering each example with one seeded-random template out of `templates`."""
  seqio.TaskRegistry.add(
      name,
      source=dataset.source,
      preprocessors=_filtered(dataset) + [_formatter(dataset, templates, seed)] + _TOKENIZE,
      output_features=output_features(),
      metric_fns=list(dataset.metric_fns if metric_fns is None else metric_fns),
  )
  return name


def add_scoring_task(name: str, dataset: InstructionDataset,
                     templates: Sequence[templates_lib.Template], seed: int = TEMPLATE_SEED) -> str:
  """A rank-classification task: every option is scored as the target of the chosen template."""
  seqio.TaskRegistry.add(
      name,
      source=dataset.source,
      preprocessors=_filtered(dataset) + [
          functools.partial(_rank_classification, to_fields=dataset.to_fields,
                            templates=tuple(templates), seed=seed)] + _TOKENIZE,
      output_features=output_features(),
      postprocess_fn=t5_post.rank_classification,
      metric_fns=[t5_metrics.rank_classification],
  )
  return name


def add_fewshot_task(name: str, dataset: InstructionDataset, template: templates_lib.Template,
                     num_shots: int, seed: int = TEMPLATE_SEED) -> str:
  """`num_shots` rendered training examples (same dataset, same template) before the query."""
  formatting = _filtered(dataset) + [_formatter(dataset, [template], seed)]
  source = seqio.experimental.FewshotDataSource(
      dataset.source, num_shots=num_shots, train_preprocessors=formatting,
      eval_preprocessors=formatting, eval_on_fixed_exemplars=True)
  seqio.TaskRegistry.add(
      name,
      source=source,
      preprocessors=[
          functools.partial(seqio.experimental.fewshot_preprocessor, targets_prefix="\n",
                            example_separator="\n\n"),
      ] + _TOKENIZE,
      output_features=output_features(),
      metric_fns=list(dataset.metric_fns),
  )
  return name


def register(dataset: InstructionDataset, seed: int = TEMPLATE_SEED) -> list[str]:
  """Registers the dataset's tasks with seqio; returns their names."""
  check(dataset)
  names = [add_generative_task(dataset.name, dataset, dataset.templates, seed),
           add_generative_task(f"{dataset.name}_eval", dataset, dataset.answer_templates, seed)]
  if dataset.has_options:
    names.append(add_scoring_task(f"{dataset.name}_scoring", dataset, dataset.answer_templates,
                                  seed))
  return names


def check(dataset: InstructionDataset) -> None:
  """Raises TemplateError when a template names a missing field or none asks for the answer."""
  templates_lib.validate(dataset.name, dataset.templates, dataset.fields)
  if not dataset.answer_templates:
    raise templates_lib.TemplateError(
        f"task {dataset.name}: needs at least one template whose target is {{answer}}")
