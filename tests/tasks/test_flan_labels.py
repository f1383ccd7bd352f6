"""FLAN label mapping: a hand-written raw example of every FLAN dataset, with a known label, becomes the answer
string that label stands for.

Mock TFDS data has random labels, so the other FLAN tests cannot see a label mapped to the wrong option (RTE's
entailment to "no", say). Each example of tests/tasks/flan_examples.py is encoded and decoded by its TFDS
builder's own features (a ClassLabel written by its TFDS name), so it reaches our code as TFDS would yield it,
with the label's meaning taken from TFDS. Then:
- a registered seqio task of the dataset runs its own preprocessors over it (from `tf.data.Dataset.from_tensors`):
  for a dataset with options, the scoring task offers all the options and marks the answer's option, and only
  it, correct; for the others, the evaluation task's target is the answer;
- every template of the dataset is rendered over its fields: a template asking for the answer targets it, one
  that turns the task around shows it in its prompt.
A dataset without an example fails `test_every_dataset_has_an_example`. Nothing is read from TFDS data files.
"""

import collections

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import flan_tasks  # noqa: F401  (registers everything)
from flan_tasks import flan, instruction, templates
from tests.tasks.flan_examples import EXAMPLES

DATASETS = {d.name: d for d in flan.DATASETS}

def _params():
  """One parameter per dataset: its name and its examples (a few datasets have two)."""
  by_dataset = collections.defaultdict(list)
  for example in EXAMPLES:
    by_dataset[example.dataset].append(example)
  return [pytest.param(examples, id=name) for name, examples in by_dataset.items()]


PARAMS = _params()


@pytest.fixture(scope="module")
def raw_of(tmp_path_factory):
  """example -> its raw TFDS example as tensors: encoded, serialized and decoded by the builder's features."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))  # empty: only the builders' feature definitions are read
  features = {}

  def raw(example):
    d = DATASETS[example.dataset]
    if d.tfds not in features:
      features[d.tfds] = tfds.builder(d.tfds, data_dir=data_dir).info.features
    spec = features[d.tfds]
    return spec.deserialize_example(spec.serialize_example(example.raw))
  return raw


def _run_task(name, raws):
  """The rows the seqio task `name` makes of the raw examples, through all its preprocessors."""
  task = seqio.get_mixture_or_task(name)
  ds = tf.data.Dataset.from_tensors(raws[0])
  for raw in raws[1:]:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(raw))
  ds = task.preprocess_precache(ds)
  return list(task.preprocess_postcache(ds, sequence_length=None).as_numpy_iterator())


def _text(tensor):
  return tensor.numpy().decode() if hasattr(tensor, "numpy") else tensor.decode()


def test_every_dataset_has_an_example():
  covered = {example.dataset for example in EXAMPLES}
  missing = sorted(set(DATASETS) - covered)
  assert not missing, f"FLAN datasets without a hand-written example in tests/tasks/flan_examples.py: {missing}"
  unknown = sorted(covered - set(DATASETS))
  assert not unknown, f"examples of datasets that FLAN does not define: {unknown}"


def test_options_are_given_exactly_for_datasets_with_options():
  for example in EXAMPLES:
    has_options = "options" in DATASETS[example.dataset].fields
    assert (example.options is not None) == has_options, example.dataset
    if has_options:
      assert example.answer in example.options, example.dataset


@pytest.mark.parametrize("examples", PARAMS)
def test_task_gives_the_answer(examples, raw_of):
  """The dataset's registered task, preprocessors and all, over its raw examples: the scoring task where the
  dataset has options (every option offered, the answer's alone marked correct), else the evaluation task."""
  d = DATASETS[examples[0].dataset]
  raws = [raw_of(example) for example in examples]
  if "options" not in d.fields:
    rows = _run_task(f"{d.task}_eval", raws)
    assert [_text(r["targets_pretokenized"]) for r in rows] == [example.answer for example in examples]
    return
  rows = _run_task(f"{d.task}_scoring", raws)
  for i, example in enumerate(examples):
    mine = [r for r in rows if r["idx"][0] == i]  # idx: [example_id, option index]
    options = [_text(r["targets_pretokenized"]) for r in mine]
    assert sorted(options) == sorted(example.options), i
    correct = [r for r in mine if r["is_correct"]]
    assert [_text(r["targets_pretokenized"]) for r in correct] == [example.answer], \
        (i, _text(mine[0]["inputs_pretokenized"]))
    assert [int(r["idx"][1]) for r in correct] == [options.index(example.answer)], i


@pytest.mark.parametrize("examples", PARAMS)
def test_every_template_gives_the_answer(examples, raw_of):
  """Every template, rendered the way the tasks render it, over the fields of each raw example."""
  d = DATASETS[examples[0].dataset]
  for example in examples:
    raw = raw_of(example)
    if d.filter_fn is not None:
      assert bool(d.filter_fn(raw)), "the example must be one the dataset keeps"
    fields = dict(d.to_fields(raw))
    assert _text(fields["answer"]) == example.answer
    if example.options is not None:
      options = [_text(o) for o in fields["options"]]
      assert sorted(options) == sorted(example.options)
      block = _text(templates.options_block(fields["options"]))
    for i, template in enumerate(d.templates):
      out = templates.apply_random_template(fields, [template], instruction.TEMPLATE_SEED)
      inputs, targets = _text(out["inputs"]), _text(out["targets"])
      if template.asks_for_answer:
        assert targets == example.answer, (i, inputs)
        if example.options is not None:
          assert inputs.endswith(block), (i, inputs)
      else:  # turned around: the answer is given in the prompt
        assert example.answer in inputs, (i, inputs)
        assert targets.strip(), i
