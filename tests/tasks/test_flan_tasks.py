"""The FLAN collection over mock TFDS data: every task yields filled-in examples, options hold
the answer, mixtures hold out the right clusters, caps and rates follow the paper's recipe."""

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import flan_tasks  # noqa: F401  (registers everything)
from flan_tasks import flan, instruction, templates
from flan_tasks.flan import clusters, mixtures
from flan_tasks.flan import dataset as dataset_lib

DATASETS = flan.DATASETS
IDS = [d.name for d in DATASETS]
ONE_PER_CLUSTER = [next(d for d in DATASETS if d.cluster == c) for c in clusters.CLUSTERS]


@pytest.fixture(scope="module", autouse=True)
def mock_tfds():
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def _examples(name, split, n=2):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(None, split=split, shuffle=False, use_cached=False)
  return list(ds.take(n).as_numpy_iterator())


def _check_examples(name, split="train"):
  examples = _examples(name, split)
  assert examples, name
  for ex in examples:
    assert ex["inputs_pretokenized"].strip(), name
    assert ex["targets_pretokenized"].strip(), name
    assert len(ex["inputs"]) > 1 and len(ex["targets"]) > 1, name  # more than EOS
  return examples


def test_collection_shape():
  assert len(DATASETS) >= 60
  assert len({d.name for d in DATASETS}) == len(DATASETS)
  assert {d.cluster for d in DATASETS} == set(clusters.CLUSTERS)
  assert {d.cluster for d in DATASETS if d.in_mixtures} == set(clusters.CLUSTERS)


@pytest.mark.parametrize("d", DATASETS, ids=IDS)
def test_template_rules(d):
  assert len(d.templates) == 10
  turned = [t for t in d.templates if not t.asks_for_answer]
  assert len(turned) <= 3
  assert d.templates[0].asks_for_answer  # the 1-template ablation asks for the answer
  assert len(set(d.templates)) == 10
  if "options" in d.fields:
    for t in d.templates:
      if t.asks_for_answer:
        assert t.inputs.endswith("{options_}")


@pytest.mark.parametrize("d", DATASETS, ids=IDS)
def test_every_template_is_filled(d):
  """Renders all ten templates over mock examples: no placeholder left, nothing empty."""
  source = dataset_lib.source(d)
  for raw in source.get_dataset("train", shuffle=False).take(2):
    fields = dict(d.to_fields(raw))
    assert set(d.fields) <= set(fields), set(d.fields) - set(fields)
    for i, t in enumerate(d.templates):
      inputs = templates.render(t.inputs, fields).numpy().decode()
      targets = templates.render(t.targets, fields).numpy().decode()
      assert inputs.strip() and targets.strip(), (d.name, i)
      for text in (inputs, targets):
        assert "{" not in text and "}" not in text, (d.name, i, text)
    if "options" in fields:
      options = [o.decode() for o in fields["options"].numpy()]
      assert fields["answer"].numpy().decode() in options
      rendered = templates.options_block(fields["options"]).numpy().decode()
      assert rendered.startswith("OPTIONS:\n- ") and len(rendered.split("\n- ")) == len(options) + 1


@pytest.mark.parametrize("d", DATASETS, ids=IDS)
def test_train_and_eval_tasks_yield_examples(d):
  names = dataset_lib.task_names(d)
  _check_examples(d.task, "train")
  _check_examples(f"{d.task}_eval", "test")
  if "options" in d.fields:
    scored = _check_examples(f"{d.task}_scoring", "test")
    assert {ex["targets_pretokenized"] for ex in scored}  # one example per option
  for kind in names.values():
    for name in kind:
      assert name in seqio.TaskRegistry.names(), name


@pytest.mark.parametrize("d", ONE_PER_CLUSTER, ids=[d.name for d in ONE_PER_CLUSTER])
def test_per_template_and_ablation_tasks(d):
  names = dataset_lib.task_names(d)
  for name in names["eval_per_template"]:
    _check_examples(name, "validation")
  for name in names["ablation"]:
    _check_examples(name, "train")
  shots = _check_examples(names["fewshot"][0], "test")
  assert shots[0]["inputs_pretokenized"].count(b"\n\n") >= dataset_lib.FEWSHOT_SHOTS


def test_per_template_task_uses_its_template():
  d = flan.by_name("rte")
  for i, t in enumerate(d.templates):
    if not t.asks_for_answer:
      continue
    (ex,) = _examples(f"{d.task}_eval_t{i}", "test", n=1)
    fields = dict(d.to_fields(next(iter(dataset_lib.source(d).get_dataset("test", shuffle=False)))))
    assert ex["inputs_pretokenized"] == templates.render(t.inputs, fields).numpy()


def test_ablation_formats():
  d = flan.by_name("anli_r1")
  (raw,) = _examples(f"{d.task}_notemplate", "train", n=1)
  assert raw["inputs_pretokenized"].endswith(b"OPTIONS:\n- yes\n- it is not possible to tell\n- no")
  (named,) = _examples(f"{d.task}_datasetname", "train", n=1)
  assert named["inputs_pretokenized"].startswith(b"[Natural language inference: ANLI R1] ")


def _clusters_of(mixture_name):
  by_task = {d.task: d.cluster for d in DATASETS}
  out = set()
  for task in seqio.get_mixture_or_task(mixture_name).tasks:
    base = task.name
    while base not in by_task:
      base = base.rsplit("_", 1)[0]
    out.add(by_task[base])
  return out


@pytest.mark.parametrize("cluster", clusters.CLUSTERS)
def test_leave_one_cluster_out(cluster):
  held_out = clusters.overlapping(cluster)
  for variant in ("",) + tuple(f"_{a}" for a in mixtures.ABLATIONS):
    trained = _clusters_of(f"flan_no_{cluster}{variant}")
    assert not trained & held_out, (cluster, variant)
    assert trained == set(clusters.CLUSTERS) - held_out
  assert _clusters_of(f"flan_eval_{cluster}") == {cluster}
  assert _clusters_of(f"flan_eval_{cluster}_templates") == {cluster}


def test_overlaps_follow_the_paper():
  assert clusters.overlapping("reading_comprehension_commonsense") == {
      "reading_comprehension_commonsense", "reading_comprehension", "commonsense"}
  assert "reading_comprehension_commonsense" in clusters.overlapping("commonsense")
  assert clusters.overlapping("nli") == {"nli", "paraphrase"}
  assert clusters.overlapping("sentiment") == {"sentiment"}


def test_cluster_count_ablation():
  for k in range(1, 8):
    assert _clusters_of(f"flan_clusters{k}") == set(clusters.ABLATION_ORDER[:k])
  for held in clusters.ABLATION_HELD_OUT:
    assert not clusters.overlapping(held) & set(clusters.ABLATION_ORDER)


def test_manual_datasets_stay_out_of_mixtures():
  manual = {d.task for d in DATASETS if not d.in_mixtures}
  assert manual  # story_cloze, newsroom, samsum, wmt16 cs-en
  for name in seqio.MixtureRegistry.names():
    if name.startswith("flan_"):
      assert not {t.name for t in seqio.get_mixture_or_task(name).tasks} & manual, name


def test_caps_and_rates():
  mixture = seqio.get_mixture_or_task("flan_all")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  for d in DATASETS:
    sizes = d.sizes()
    assert sizes["train"] <= dataset_lib.TRAIN_CAP
    skipped = d.carve_out * (1 if d.test_split else 2)
    assert sizes["train"] == min(d.train_size - skipped, 30_000)
    if d.in_mixtures:
      assert rates[d.task] == min(sizes["train"], 3_000), d.name
  assert rates["flan_cb"] == 250 - 25  # small: the rate is the example count
  assert rates["flan_snli"] == 3_000   # large: capped at 3,000


def test_template_error_names_task_template_and_field():
  d = flan.by_name("cb")
  bad = dataset_lib.FlanDataset(**{**d.__dict__, "templates": list(d.templates[:9]) + [
      templates.Template("{premise} {nonexistent}\n{options_}")]})
  with pytest.raises(templates.TemplateError, match=r"flan_cb.*template 9.*'nonexistent'"):
    dataset_lib.register(bad)


def test_template_choice_is_deterministic_and_covers_all():
  d = flan.by_name("mnli")
  first = [ex["inputs_pretokenized"] for ex in _examples(d.task, "train")]
  second = [ex["inputs_pretokenized"] for ex in _examples(d.task, "train")]
  assert first == second
  seen = set()
  for i in range(300):
    ex = {"premise": tf.constant(f"p{i}"), "hypothesis": tf.constant(f"h{i}")}
    index = int(templates.choose_template(ex, 10, instruction.TEMPLATE_SEED))
    assert index == int(templates.choose_template(ex, 10, instruction.TEMPLATE_SEED))
    seen.add(index)
  assert seen == set(range(10))


def test_tfds_names_exist_in_installed_tfds():
  for d in DATASETS:
    name, version = d.tfds.split(":")
    builder_name, _, config = name.partition("/")
    cls = tfds.builder_cls(builder_name)
    if config:
      configs = {c.name: c for c in cls.BUILDER_CONFIGS}
      assert config in configs, d.tfds
      assert str(configs[config].version or cls.VERSION) == version, d.tfds
    else:
      assert str(cls.VERSION) == version, d.tfds
