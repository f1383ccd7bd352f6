"""The contamination check before held-out evaluation: a clean leave-one-cluster-out design passes;
training on a held-out dataset, or on copies of its examples (shared n-grams), is refused."""

import itertools
import json

import pytest
import seqio
import tensorflow as tf

from flan_jax import task_info
from flan_jax.data import contamination
from flan_jax.errors import UserError
import flan_tasks  # noqa: F401  (registers the embedded and FLAN collections)
from flan_tasks import embedded, files
from flan_tasks.vocab import output_features

FAST = {"max_train_examples_per_task": 100, "max_eval_examples": 40}
_ids = itertools.count()


def _eval_tasks(cluster):
  return [task.name for task in seqio.get_mixture_or_task(f"embedded_eval_{cluster}").tasks]


@pytest.fixture
def registry():
  """Registers uniquely named tasks and mixtures, and removes them (and their task_info
  records) after the test."""

  class Registry:
    def __init__(self):
      self.tasks, self.mixtures = [], []

    def name(self, stem):
      return f"contamination_test_{stem}_{next(_ids)}"

    def function_task(self, name, splits):
      """A task whose source yields {"text": ...} rows: splits maps split -> list of texts."""
      dataset_fn = lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
          {"text": splits[split]})
      seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
                             preprocessors=[], output_features=output_features())
      self.tasks.append(name)
      return name

    def jsonl_task(self, name, path, rows):
      path.write_text("".join(json.dumps(row) + "\n" for row in rows))
      files.jsonl_task(name, str(path), ["{text}\n{options_}"], answer_field="label",
                       options_field="choices")
      self.tasks.extend(task_info.tasks_of(name))
      return name

    def mixture(self, name, tasks):
      seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)
      self.mixtures.append(name)
      return name

  registry = Registry()
  yield registry
  for name in registry.mixtures:
    seqio.MixtureRegistry.remove(name)
  for name in registry.tasks:
    seqio.TaskRegistry.remove(name)
    task_info.remove(name)


def test_clean_design_passes_and_records_what_it_checked():
  record = contamination.check("embedded_no_sentiment", _eval_tasks("sentiment"), **FAST)
  assert json.loads(json.dumps(record)) == record
  assert record["clean"] and record["n"] == 13 and record["max_dirty_fraction"] == 0.01
  assert "embedded_movie_review" not in record["train_datasets"]
  assert len(record["train_tasks"]) == 12 and record["train_examples"] == 12 * 100
  assert all(stats["examples"] == 100 for stats in record["train_datasets"].values())
  assert sorted(record["eval_datasets"]) == [
      "embedded_movie_review", "embedded_product_review", "embedded_restaurant_review"]
  for dataset, stats in record["eval_datasets"].items():
    assert stats["examples"] == 80 and stats["dirty"] == 0 and stats["fraction"] == 0.0
    assert stats["splits"] == {"validation": {"examples": 40, "dirty": 0},
                               "test": {"examples": 40, "dirty": 0}}
    assert stats["dirty_example"] is None
    assert all(task_info.lookup(task).dataset == dataset for task in stats["tasks"])


def test_eval_tasks_may_name_a_mixture():
  record = contamination.check("embedded_no_topic", ["embedded_eval_topic"], eval_splits=("test",),
                               max_train_examples_per_task=20, max_eval_examples=10)
  assert sorted(record["eval_datasets"]) == [
      "embedded_animal_habitat", "embedded_headline_topic", "embedded_product_category"]
  assert all(stats["examples"] == 10 for stats in record["eval_datasets"].values())


def test_training_on_a_held_out_dataset_is_refused():
  with pytest.raises(contamination.ContaminationError) as refused:
    contamination.check("embedded_all", _eval_tasks("sentiment"))
  message = str(refused.value)
  assert isinstance(refused.value, UserError) and "\n" not in message
  assert message.startswith("contamination: the training mixture 'embedded_all' trains on held-out "
                            "datasets embedded_movie_review (task embedded_movie_review), ")
  assert ("leave cluster sentiment out of the training mixture (e.g. train on "
          "'embedded_no_sentiment'), or evaluate another cluster") in message
  assert refused.value.record["trained_on"]["embedded_restaurant_review"] == [
      "embedded_restaurant_review"]


def test_training_variants_count_as_their_dataset():
  """FLAN's ablation tasks (flan_rte_notemplate) are registered as training tasks of flan_rte; the
  refusal comes before any (here: unavailable, TFDS) data is read."""
  nli = seqio.get_mixture_or_task("flan_eval_nli_templates").tasks
  with pytest.raises(UserError, match=r"held-out datasets .*flan_rte \(task flan_rte_notemplate\).* "
                     r"leave cluster nli out .*\(e\.g\. train on 'flan_no_nli_notemplate'\)"):
    contamination.check("flan_no_sentiment_notemplate", [task.name for task in nli])


def test_an_unregistered_training_task_is_matched_by_name(registry):
  copy = registry.function_task("embedded_movie_review_" + registry.name("copy"), {"train": ["x"]})
  mixture = registry.mixture(registry.name("mix"), [copy, "embedded_addition"])
  with pytest.raises(UserError, match=rf"embedded_movie_review \(task {copy}\)"):
    contamination.check(mixture, _eval_tasks("sentiment"))


def test_copied_examples_are_refused(registry, tmp_path):
  """A user task (another dataset name, other field names) holding copies of held-out examples:
  the short examples match as whole texts, whatever their fields are called."""
  copied = embedded.examples("movie_review", "validation")[:30]
  rows = [{"text": ex["review"].upper(), "label": ex["answer"], "choices": ex["options"]}
          for ex in copied]
  copy = registry.jsonl_task(registry.name("copy"), tmp_path / "copy.jsonl", rows)
  mixture = registry.mixture(registry.name("mix"), [copy, "embedded_addition"])
  checked = [ex for split in ("validation", "test")
             for ex in embedded.examples("movie_review", split)[:40]]
  seen = {(ex["review"], ex["answer"]) for ex in copied}
  expected = sum((ex["review"], ex["answer"]) in seen for ex in checked)
  assert 30 <= expected < 80
  with pytest.raises(contamination.ContaminationError) as refused:
    contamination.check(mixture, _eval_tasks("sentiment"), **FAST)
  message = str(refused.value)
  assert "\n" not in message
  assert message.startswith(f"contamination: held-out dataset embedded_movie_review ({expected} of 80 "
                            f"examples, {expected / 80:.1%}) overlaps the training data of '{mixture}'")
  assert "max_dirty_fraction=0.01" in message and f"with training task {copy};" in message
  assert "e.g. embedded_movie_review validation example 0 '" in message  # copied[0] is validation 0
  record = refused.value.record
  assert record["eval_datasets"]["embedded_movie_review"]["dirty"] == expected
  assert record["eval_datasets"]["embedded_movie_review"]["dirty_example"]["train_task"] == copy
  assert record["eval_datasets"]["embedded_product_review"]["dirty"] == 0
  assert record["train_datasets"][copy]["examples"] == 30


def _long_text(i, words=30):
  return " ".join(f"word{i}x{j}" for j in range(words)) + "."


def test_one_shared_ngram_makes_a_long_example_dirty_and_the_threshold_applies(registry):
  held_out = registry.function_task(registry.name("long") + "_eval",
                                    {"validation": [_long_text(i) for i in range(10)]})
  words3, words4 = _long_text(3).rstrip(".").split(), _long_text(4).rstrip(".").split()
  corpus = [
      # example 3's words 5..17 (13 words), in other case and punctuation, inside other text
      "Some unrelated opening words, then: " + ", ".join(words3[5:18]).upper() + "! and more after.",
      # example 4's first 12 words only: no 13-gram in common
      "prefix " + " ".join(words4[:12]) + " suffix and another twenty words " + _long_text(99),
  ]
  train = registry.function_task(registry.name("corpus"), {"train": corpus})
  record = contamination.check(train, [held_out], max_dirty_fraction=0.1)  # 1 of 10 is not above 0.1
  stats = record["eval_datasets"][task_info.lookup(held_out).dataset]
  assert (stats["examples"], stats["dirty"], stats["fraction"]) == (10, 1, 0.1)
  assert stats["dirty_example"] == {"split": "validation", "index": 3, "text": _long_text(3)[:77] + "...",
                                    "shared": " ".join(words3[5:18])[:77] + "...", "train_task": train}
  with pytest.raises(contamination.ContaminationError, match=(
      r"held-out dataset contamination_test_long_\d+ \(1 of 10 examples, 10\.0%\) overlaps the training "
      rf"data of '{train}' \(a shared 13-word sequence, .* more than max_dirty_fraction=0\.05 allows; "
      rf"e\.g\. contamination_test_long_\d+ validation example 3 'word3x0 .*' shares 'word3x5 .*' with "
      rf"training task {train}; remove the overlapping examples")):
    contamination.check(train, [held_out], max_dirty_fraction=0.05)
  record = contamination.check(train, [held_out], n=12, max_dirty_fraction=1.0)
  assert record["eval_datasets"][task_info.lookup(held_out).dataset]["dirty"] == 2


def test_short_examples_match_only_as_a_whole(registry):
  held_out = registry.function_task(registry.name("short") + "_eval",
                                    {"test": ["The red ball", "a blue kite", "green door"]})
  train = registry.function_task(registry.name("corpus"), {
      "train": ["THE RED BALL!", "a blue kite flies high", "door green"]})
  record = contamination.check(train, [held_out], eval_splits=("validation", "test"),
                               max_dirty_fraction=1.0)
  (stats,) = record["eval_datasets"].values()
  assert stats["splits"] == {"test": {"examples": 3, "dirty": 1}}
  assert stats["dirty_example"]["index"] == 0 and stats["dirty_example"]["shared"] == "the red ball"


def test_bad_arguments_are_user_errors():
  with pytest.raises(UserError, match=r"unknown task or mixture 'embedded_no_sentimen'.*did you mean"):
    contamination.check("embedded_no_sentimen", _eval_tasks("sentiment"))
  with pytest.raises(UserError, match="no evaluation tasks"):
    contamination.check("embedded_no_sentiment", [])
  with pytest.raises(UserError, match="max_dirty_fraction"):
    contamination.check("embedded_no_sentiment", _eval_tasks("sentiment"), max_dirty_fraction=2)
