"""The NIv2 sub-mixture (flan_tasks.flan.niv2) over mock TFDS data: random mock rows for "every task renders,
tokenizes and packs", and hand-written rows (through `tfds.testing.mock_data(as_dataset_fn=...)`, so they reach the
tasks through the real TFDS source) for prompts, few-shot exemplars, the per-task cap, the held-out share and the
exclusion by source dataset."""

import collections
import re

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flan_jax.data import accounting
from flan_jax.data import pipeline as data_lib
from flan_tasks.flan import clusters, niv2
from tests.checks import one_line_error

LENGTHS = {"inputs": 256, "targets": 32}
QUOREF_Q, QUOREF_A, MCTACO = ("task001_quoref_question_generation", "task002_quoref_answer_generation",
                              "task003_mctaco_question_generation_event_duration")
RTE_LIKE = "task1344_glue_entailment_classification"
SHOT = re.compile(r"Sample input: (.*?)\nSample output: (.*?)\n\n", re.S)


@pytest.fixture(scope="module", autouse=True)
def registered():
  niv2.register_all()


def _row(id_, task, input_, output, definition="Write a question about the passage.", source="quoref"):
  return {"id": id_, "input": input_, "output": output, "source": source, "task_name": task,
          "definition": definition}


def _ids(prefix, held_out, count):
  """`count` ids "prefix-i" that fall in the held-out share (or in the training share)."""
  out, i = [], 0
  while len(out) < count:
    id_ = f"{prefix}-{i}"
    if bool(niv2.held_out({"id": tf.constant(id_)})) == held_out:
      out.append(id_)
    i += 1
  return out


def _training_rows():
  """Rows of the training share: quoref questions (6, one input twice), quoref answers (2), mctaco (1)."""
  q = _ids("q", False, 6)
  a = _ids("a", False, 2)
  m = _ids("m", False, 1)
  inputs = ["Passage: Ann met Bo.", "Passage: Cy sang.", "Passage: Cy sang.", "Passage: Di ran.",
            "Passage: Ed slept.", "Passage: Fay swam."]
  rows = [_row(i, QUOREF_Q, text, f"Who is in '{text}'?") for i, text in zip(q, inputs)]
  rows += [_row(a[0], QUOREF_A, "Q: Who met Bo? P: Ann met Bo.", "Ann", "Answer from the passage."),
           _row(a[1], QUOREF_A, "Q: Who sang? P: Cy sang.", "Cy", "Answer from the passage.")]
  rows.append(_row(m[0], MCTACO, "Sentence: He ate.", "How long did he eat?", "Ask about duration.", "mctaco"))
  return rows


def _mocked(rows):
  """mock_data serving `rows` (for every split) as the TFDS builder's decoded examples."""
  def as_dataset(self, *args, **kwargs):
    del args, kwargs
    features = self.info.features
    encoded = [features.deserialize_example(features.serialize_example(r)) for r in rows]
    return tf.data.Dataset.from_tensor_slices({k: tf.stack([e[k] for e in encoded]) for k in encoded[0]})
  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


def _read(name, split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False, use_cached=False)
  return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in ex.items()} for ex in ds.as_numpy_iterator()]


def _query(prompt):
  return re.search(r"\n\nInput: (.*?)\nOutput:$", prompt, re.S).group(1)


# ------------------------------------------------------------------ registration and mixtures
def test_register_all_is_idempotent_and_complete():
  first = niv2.register_all()
  assert niv2.register_all() == first
  assert {niv2.ZERO_SHOT, niv2.FEW_SHOT, niv2.EVAL, niv2.MIXTURE} <= set(first)
  for name in first:
    assert name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names(), name


def test_mixture_contents_and_configured_rates():
  mixture = seqio.get_mixture_or_task(niv2.MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == sorted([niv2.FEW_SHOT, niv2.ZERO_SHOT])
  assert accounting.configured_rates(niv2.MIXTURE) == {niv2.FEW_SHOT: 0.5, niv2.ZERO_SHOT: 0.5}
  for cluster in clusters.CLUSTERS:
    held = seqio.get_mixture_or_task(f"{niv2.MIXTURE}_no_{cluster}")
    assert sorted(t.name for t in held.tasks) == [f"{niv2.FEW_SHOT}_no_{cluster}", f"{niv2.ZERO_SHOT}_no_{cluster}"]
  assert seqio.get_mixture_or_task(niv2.EVAL).splits == ("test",)


def test_held_out_cluster_tasks_differ_only_by_exclusion():
  for cluster in clusters.CLUSTERS:
    for base in (niv2.ZERO_SHOT, niv2.FEW_SHOT):
      task, plain = seqio.get_mixture_or_task(f"{base}_no_{cluster}"), seqio.get_mixture_or_task(base)
      assert task.source.exclude == niv2.cluster_exclusions(cluster) != ()
      assert (task.source.cap, task.source.held_out_share) == (plain.source.cap, plain.source.held_out_share)
      assert [type(p) for p in task.preprocessors] == [type(p) for p in plain.preprocessors]


def test_every_task_renders_tokenizes_and_packs():
  """Every kind of training task (the held-out-cluster variants of the others: one of them, for time)."""
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    for name in (niv2.ZERO_SHOT, niv2.FEW_SHOT, f"{niv2.ZERO_SHOT}_no_nli", f"{niv2.FEW_SHOT}_no_nli"):
      examples = _read(name)
      assert len(examples) == 4, name  # random task names: four tasks of one instance each, under the cap
      for ex in examples:
        assert ex["inputs_pretokenized"].startswith("Instructions: "), name
        assert ex["inputs_pretokenized"].endswith("\nOutput:"), name
        assert len(ex["inputs"]) > 1 and len(ex["targets"]) > 1, name
    batch = next(data_lib.get_dataset(niv2.MIXTURE, LENGTHS, "train", 4, pack=True).as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (4, sum(LENGTHS.values()))
  assert batch["decoder_segment_ids"].max() >= 2  # two examples packed into one row


# ------------------------------------------------------------------ prompts
def test_hand_written_example_gives_expected_text():
  rows = [_row(_ids("h", False, 1)[0], MCTACO, "Sentence: He ate.", "How long did he eat?",
               "Ask about duration.", "mctaco")]
  with _mocked(rows):
    (zero,) = _read(niv2.ZERO_SHOT)
  assert zero["inputs_pretokenized"] == "Instructions: Ask about duration.\n\nInput: Sentence: He ate.\nOutput:"
  assert zero["targets_pretokenized"] == "How long did he eat?"
  assert zero["target_delimiter"] == " "
  rows.append(_row(_ids("h", False, 2)[1], MCTACO, "Sentence: She ran.", "How long did she run?",
                   "Ask about duration.", "mctaco"))
  with _mocked(rows):
    first = _read(niv2.FEW_SHOT)[0]
  assert first["inputs_pretokenized"] == (
      "Instructions: Ask about duration.\n\n"
      "Sample input: Sentence: She ran.\nSample output: How long did she run?\n\n"
      "Input: Sentence: He ate.\nOutput:")
  assert first["targets_pretokenized"] == "How long did he eat?"


def test_few_shot_uses_own_task_examples_and_never_the_instance():
  rows = _training_rows()
  pairs_of = collections.defaultdict(set)
  for r in rows:
    pairs_of[r["task_name"]].add((r["input"], r["output"]))
  task_of_input = {r["input"]: r["task_name"] for r in rows}
  with _mocked(rows):
    examples = _read(niv2.FEW_SHOT)
  assert len(examples) == len(rows)
  shots = []
  for ex in examples:
    prompt = ex["inputs_pretokenized"]
    query = _query(prompt)
    task = task_of_input[query]
    exemplars = SHOT.findall(prompt)
    shots.append(len(exemplars))
    assert len(exemplars) <= niv2.MAX_SHOTS
    for pair in exemplars:
      assert pair in pairs_of[task], (pair, task)  # the task's own instances, with their outputs
      assert pair[0] != query  # never the instance itself, nor a copy of its input
  # mctaco alone: none; quoref answers: one each; quoref questions: the 5 others, or 4 for the input given twice
  assert sorted(shots) == [0, 1, 1, 4, 4, 5, 5, 5, 5]


def test_fixed_shots_keep_only_instances_with_that_many():
  niv2.add_few_shot_task("test_niv2_two_shots", shots=2)
  try:
    with _mocked(_training_rows()):
      examples = _read("test_niv2_two_shots")
  finally:
    seqio.TaskRegistry.remove("test_niv2_two_shots")
  assert len(examples) == 6  # only the quoref questions have two other instances
  assert all(len(SHOT.findall(ex["inputs_pretokenized"])) == 2 for ex in examples)


def test_budget_limits_shots():
  rows = _training_rows()
  query = len("Instructions: Write a question about the passage.\n\nInput: Passage: Ann met Bo.\nOutput:")
  one = len("Sample input: Passage: Cy sang.\nSample output: Who is in 'Passage: Cy sang.'?\n\n")
  ds = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows[:6]] for k in rows[0]})
  (first, *_) = list(niv2.few_shot(ds, max_chars=query + one).as_numpy_iterator())
  assert len(first["inputs"].decode()) <= query + one
  assert len(SHOT.findall(first["inputs"].decode())) == 1


def test_too_many_fixed_shots_is_one_line_error():
  one_line_error(lambda: niv2.add_few_shot_task("test_niv2_bad", shots=4, max_chars=120), r"4 shots do not fit")
  one_line_error(lambda: niv2.check_shots(9, 10_000, niv2.WINDOW), r"window")
  assert "test_niv2_bad" not in seqio.TaskRegistry.names()


# ------------------------------------------------------------------ which instances
def test_cap_keeps_first_n_per_task_deterministically():
  names = [QUOREF_Q] * 7 + [QUOREF_A] * 3 + ["not_a_builder_task"] * 5
  order = [0, 10, 1, 7, 2, 11, 3, 8, 4, 12, 5, 9, 6, 13, 14]  # tasks interleaved
  rows = [{"id": f"r{i}", "task_name": names[i]} for i in order]
  ds = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in rows] for k in rows[0]})
  kept = [ex["id"].decode() for ex in niv2.cap_per_task(ds, 4).as_numpy_iterator()]
  again = [ex["id"].decode() for ex in niv2.cap_per_task(ds, 4).as_numpy_iterator()]
  assert kept == again
  counts = collections.Counter(names[int(i[1:])] for i in kept)
  assert counts == {QUOREF_Q: 4, QUOREF_A: 3, "not_a_builder_task": 4}
  first_quoref = [f"r{i}" for i in order if names[i] == QUOREF_Q][:4]
  assert [i for i in kept if names[int(i[1:])] == QUOREF_Q] == first_quoref
  one_line_error(lambda: niv2.cap_per_task(ds, 0), r"at least 1")


def test_cap_in_the_task_source_and_over_epochs():
  niv2.add_zero_shot_task("test_niv2_cap2", cap=2)
  try:
    with _mocked(_training_rows()):
      examples = _read("test_niv2_cap2")
      source = seqio.get_mixture_or_task("test_niv2_cap2").source
      twice = list(source.get_dataset("train", num_epochs=2).as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove("test_niv2_cap2")
  tasks = collections.Counter(re.search(r"Instructions: (.*?)\n", ex["inputs_pretokenized"]).group(1)
                              for ex in examples)
  assert tasks == {"Write a question about the passage.": 2, "Answer from the passage.": 2,
                   "Ask about duration.": 1}
  assert len(twice) == 2 * len(examples)
  assert niv2.MAX_INSTANCES_PER_TASK == 100


def test_held_out_share_is_disjoint_from_training():
  rows = [_row(i, QUOREF_Q, f"Passage {i}.", f"Answer {i}.") for i in _ids("t", False, 3) + _ids("e", True, 2)]
  with _mocked(rows):
    trained = {_query(ex["inputs_pretokenized"]) for ex in _read(niv2.ZERO_SHOT)}
    evaluated = _read(niv2.EVAL, "test")
  held = {_query(ex["inputs_pretokenized"]) for ex in evaluated}
  assert len(trained) == 3 and len(held) == 2 and not trained & held
  assert [ex["example_id"] for ex in evaluated] == [0, 1]
  assert evaluated[0]["targets_pretokenized"] == rows[3]["output"]


def test_exclusion_by_source_dataset():
  assert {"rte", "anli", "mnli", "snli", "paws_wiki"} <= set(niv2.cluster_exclusions("nli"))
  assert "rte" not in niv2.cluster_exclusions("sentiment")
  keep = _ids("k", False, 3)
  rows = [_row(keep[0], RTE_LIKE, "P: a. H: b.", "yes", "Entailment?", "rte"),
          _row(keep[1], "task202_anli_r1_classification", "P: c. H: d.", "no", "Entailment?", "adversarial"),
          _row(keep[2], "task999_scanlines_counting", "Lines: 3", "3", "Count the lines.", "scanlines")]
  with _mocked(rows):
    without_nli = [_query(ex["inputs_pretokenized"]) for ex in _read(f"{niv2.ZERO_SHOT}_no_nli")]
    without_sentiment = [_query(ex["inputs_pretokenized"]) for ex in _read(f"{niv2.ZERO_SHOT}_no_sentiment")]
  assert without_nli == ["Lines: 3"]  # "anli" is a word of the task name; "scanlines" holds it only as letters
  assert without_sentiment == ["P: a. H: b.", "P: c. H: d.", "Lines: 3"]


def test_metrics_score_the_output():
  targets, predictions = ["How long did he eat?", "Ann"], ["How long did he eat?", "Bo"]
  scores = {}
  for fn in niv2.METRICS:
    scores.update(fn(targets, predictions))
  assert scores["em"] == pytest.approx(50.0)
  assert scores["rougeL"] == pytest.approx(50.0)
