"""The task lineage registry: what each task evaluates, the per-template tasks of every dataset,
and example ids that name the same underlying example in every template."""

import json
import os
import subprocess
import sys

import pytest
import seqio

from flan_jax import task_info
from flan_jax.task_info import TaskInfo
import flan_tasks  # noqa: F401  (registers everything)
from flan_tasks import embedded, files, flan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {"inputs": 128, "targets": 32}


def _examples(name, split="validation", n=-1):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, use_cached=False)
  return list(ds.take(n).as_numpy_iterator())


def _answer_indices(templates):
  return [i for i, t in enumerate(templates) if t.asks_for_answer]


def _per_template(name, templates, options):
  names = [task_info.eval_task(name, i) for i in _answer_indices(templates)]
  if options:
    names += [task_info.scoring_task(name, i) for i in _answer_indices(templates)]
  return names


def test_importing_needs_no_tensorflow_seqio_or_jax():
  code = ("import sys, flan_jax.task_info; "
          "print([m for m in ('tensorflow', 'seqio', 'jax') if m in sys.modules])")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]"


def test_suffixes():
  assert task_info.eval_task("x") == "x_eval" and task_info.eval_task("x", 3) == "x_eval_t3"
  assert task_info.scoring_task("x") == "x_scoring"
  assert task_info.scoring_task("x", 0) == "x_scoring_t0"


def test_lookup_of_registered_tasks():
  lookup = task_info.lookup
  assert lookup("embedded_color_nli_scoring_t2") == TaskInfo("embedded_color_nli", "nli", 2, "scoring")
  assert lookup("embedded_addition_eval_t1") == TaskInfo("embedded_addition", "arithmetic", 1,
                                                         "generative")
  assert lookup("embedded_addition_eval") == TaskInfo("embedded_addition", "arithmetic", None,
                                                      "generative")
  assert lookup("embedded_parity") == TaskInfo("embedded_parity", "arithmetic", None, "train")
  assert lookup("flan_cb_scoring_t4") == TaskInfo("flan_cb", "nli", 4, "scoring")
  assert lookup("flan_cb_scoring") == TaskInfo("flan_cb", "nli", None, "scoring")
  assert lookup("flan_squad_v1_eval_t0") == TaskInfo("flan_squad_v1", "reading_comprehension", 0,
                                                     "generative")
  assert lookup("flan_cb_templates4") == TaskInfo("flan_cb", "nli", None, "train")
  assert lookup("flan_cb_3shot").kind == "generative"


def test_fallback_for_unregistered_tasks():
  lookup = task_info.lookup
  assert lookup("my_rte_scoring_t3") == TaskInfo("my_rte", "unknown", 3, "scoring")
  assert lookup("my_rte_eval_t12") == TaskInfo("my_rte", "unknown", 12, "generative")
  assert lookup("my_rte_scoring") == TaskInfo("my_rte", "unknown", None, "scoring")
  assert lookup("my_rte_eval") == TaskInfo("my_rte", "unknown", None, "generative")
  assert lookup("my_rte") == TaskInfo("my_rte", "unknown", None, "generative")
  assert lookup("my_eval_set_t1") == TaskInfo("my_eval_set_t1", "unknown", None, "generative")


def test_register_checks_kind_and_template():
  with pytest.raises(ValueError, match="kind"):
    task_info.register("t", dataset="d", cluster="c", template=None, kind="decode")
  with pytest.raises(ValueError, match="template"):
    task_info.register("t", dataset="d", cluster="c", template="1", kind="scoring")


def test_every_answer_template_has_its_tasks():
  collections = [(embedded.PREFIX + name, cluster, templates, "options" in fields)
                 for cluster, name, _, fields, templates in embedded.DATASETS]
  collections += [(d.task, d.cluster, d.templates, "options" in d.fields) for d in flan.DATASETS]
  registered = set(seqio.TaskRegistry.names())
  for name, cluster, templates, options in collections:
    expected = _per_template(name, templates, options)
    assert set(expected) <= registered, name
    for task in expected:
      info = task_info.lookup(task)
      assert (info.dataset, info.cluster) == (name, cluster)
      assert templates[info.template].asks_for_answer
    turned = [i for i, t in enumerate(templates) if not t.asks_for_answer]
    assert not {task_info.eval_task(name, i) for i in turned} & registered, name


def test_scoring_tasks_number_examples_alike_in_every_template():
  source = embedded.examples("color_nli", "validation")
  by_template = []
  for i in (0, 3):
    rows = _examples(task_info.scoring_task("embedded_color_nli", i), n=3 * 40)  # 3 options
    ids = {}
    for ex in rows:
      example_id, option = ex["idx"]
      assert ex["example_id"] == example_id
      assert source[example_id]["premise"] in ex["inputs_pretokenized"].decode()
      if ex["is_correct"]:
        ids[int(example_id)] = ex["targets_pretokenized"].decode()
    assert sorted(ids) == list(range(40))
    by_template.append(ids)
  assert by_template[0] == by_template[1] == {k: source[k]["answer"] for k in range(40)}


def test_generative_tasks_number_examples_alike_in_every_template():
  source = embedded.examples("addition", "validation")
  for name in (task_info.eval_task("embedded_addition", 0),
               task_info.eval_task("embedded_addition", 2), "embedded_addition_eval"):
    rows = _examples(name)
    assert [int(ex["example_id"]) for ex in rows] == list(range(len(source)))
    for ex in rows:
      row = source[ex["example_id"]]
      assert ex["targets_pretokenized"].decode() == row["answer"]
      assert f"{row['a']}" in ex["inputs_pretokenized"].decode()
      assert f"{row['b']}" in ex["inputs_pretokenized"].decode()


def test_example_ids_pass_the_feature_converter_and_the_evaluator():
  pair = [task_info.eval_task("embedded_parity", 0), task_info.scoring_task("embedded_parity", 0)]
  seqio.MixtureRegistry.remove("test_task_info_pair")
  seqio.MixtureRegistry.add("test_task_info_pair", pair, default_rate=1.0)
  evaluator = seqio.Evaluator(
      "test_task_info_pair", feature_converter=seqio.DecoderFeatureConverter(pack=False),
      eval_split="validation", sequence_length=LENGTHS, num_examples=6, use_cached=False,
      async_compute_metrics=False)
  future, _ = evaluator.evaluate(
      compute_metrics=True, step=0,
      predict_fn=lambda ds: [(i, [1]) for i, _ in ds.as_numpy_iterator()],
      score_fn=lambda ds: [(i, 0.0) for i, _ in ds.as_numpy_iterator()])
  metrics = future.result()
  assert set(metrics) == set(pair) and all("accuracy" in m for m in metrics.values())


def test_embedded_eval_mixtures_hold_exactly_the_per_template_tasks():
  for cluster in embedded.CLUSTERS:
    expected = [task for c, name, _, fields, templates in embedded.DATASETS if c == cluster
                for task in _per_template(embedded.PREFIX + name, templates, "options" in fields)]
    mixture = seqio.get_mixture_or_task(f"{embedded.PREFIX}eval_{cluster}")
    assert sorted(t.name for t in mixture.tasks) == sorted(expected)
    assert {task_info.lookup(t.name).cluster for t in mixture.tasks} == {cluster}


def test_flan_template_mixtures_hold_the_per_template_tasks():
  for cluster in ("nli", "summarization"):
    expected = [task for d in flan.DATASETS if d.cluster == cluster and d.in_mixtures
                for task in _per_template(d.task, d.templates, "options" in d.fields)]
    mixture = seqio.get_mixture_or_task(f"flan_eval_{cluster}_templates")
    assert sorted(t.name for t in mixture.tasks) == sorted(expected)


def test_file_task_registered_again_replaces_its_per_template_tasks(tmp_path):
  path = tmp_path / "qa.jsonl"
  path.write_text("".join(json.dumps({"q": f"{i}?", "a": "yes", "o": ["yes", "no"]}) + "\n"
                          for i in range(4)))
  name = files.jsonl_task("user_test_info", str(path), ["{q}\n{options_}", "Q: {q}\n{options_}"],
                          answer_field="a", options_field="o", cluster="quiz")
  assert task_info.lookup(f"{name}_scoring_t1") == TaskInfo(name, "quiz", 1, "scoring")
  assert [int(ex["example_id"]) for ex in _examples(f"{name}_eval_t1", "test")] == [0, 1, 2, 3]
  files.jsonl_task(name, str(path), ["Q: {q}"], answer_field="a")
  registered = set(seqio.TaskRegistry.names())
  assert f"{name}_eval_t0" in registered and task_info.lookup(f"{name}_eval_t0").cluster == "user"
  assert not {f"{name}_eval_t1", f"{name}_scoring_t0", f"{name}_scoring_t1"} & registered
  assert task_info.lookup(f"{name}_eval_t1").cluster == "unknown"
