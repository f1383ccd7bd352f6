"""Chain-of-thought tasks (flan_tasks.flan.cot): every task renders, tokenizes and packs over mock TFDS data; a
hand-written raw example of each dataset becomes its rationale plus the fixed answer line; the answer extractor,
the evaluation metric, the clusters, the mixtures, and the refusal of a dataset without rationales."""

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flan_jax import task_info
from flan_jax.data import contamination
from flan_jax.data import pipeline as data_lib
from flan_tasks import flan, instruction, templates
from flan_tasks.flan import clusters, cot
from flan_tasks.flan import dataset as dataset_lib
from tests.checks import one_line_error

DATASETS = {d.name: d for d in cot.DATASETS}
IDS = list(DATASETS)
LENGTHS = {"inputs": 256, "targets": 128}

# The rationale features each dataset's builder must have (read from the installed TFDS feature dicts).
RATIONALE_FEATURES = {
    "cot_gsm8k": ("annotation", "short_answer"),
    "cot_esnli": ("explanation_1", "label"),
    "cot_cos_e": ("abstractive_explanation", "answer"),
    "cot_qasc": ("fact1", "fact2", "combinedfact", "answerKey"),
    "cot_math_qa": ("Rationale", "correct_option"),
}

# One hand-written raw example per dataset (TFDS feature format, every feature present), with the target that
# every template must give it: the rationale, then the answer line.
EXAMPLES = {
    "cot_gsm8k": (
        {"question": "A baker fills 3 trays with 4 rolls each. How many rolls is that?",
         "answer": "Each tray holds 4 rolls, so 3*4=<<3*4=12>>12 rolls.\n#### 12",
         "annotation": "Each tray holds 4 rolls, so 3*4=<<3*4=12>>12 rolls.\n", "short_answer": "12"},
        "Each tray holds 4 rolls, so 3*4=12 rolls.\nSo the answer is 12."),
    "cot_esnli": (
        {"premise": "A woman rides a bicycle along the beach.", "hypothesis": "A woman is asleep in bed.",
         "label": "contradiction", "explanation_1": "someone riding a bicycle cannot be asleep in bed",
         "explanation_2": "", "explanation_3": ""},
        "Someone riding a bicycle cannot be asleep in bed.\nSo the answer is no."),
    "cot_cos_e": (
        {"id": "c1", "question": "Where would you keep your savings safe?",
         "choices": ["bank", "pocket", "garden", "river", "bus"], "answer": "bank",
         "abstractive_explanation": "a bank is a safe place that stores money",
         "extractive_explanation": "savings safe"},
        "A bank is a safe place that stores money.\nSo the answer is bank."),
    "cot_qasc": (
        {"id": "q1", "question": "What do plants need in order to grow?",
         "choices": {"text": ["rocks", "darkness", "the sun", "salt water"], "label": ["A", "B", "C", "D"]},
         "answerKey": "C", "fact1": "plants need sunlight to grow", "fact2": "The sun is the source of sunlight.",
         "combinedfact": "plants need the sun to grow", "formatted_question": "What do plants need? (A) rocks"},
        "Plants need sunlight to grow. The sun is the source of sunlight. Plants need the sun to grow.\n"
        "So the answer is the sun."),
    "cot_math_qa": (
        {"Problem": "what is 20 % of 150 ?", "Rationale": "\"explanation : 20 % of 150 = 0.2 * 150 = 30 . answer : b\"",
         "options": "a ) 25 , b ) 30 , c ) 35 , d ) 40 , e ) 45", "correct": "b",
         "annotated_formula": "multiply(divide(20, 100), 150)",
         "linear_formula": "divide(n0,const_100)|multiply(#0,n1)|",
         "category": "gain", "correct_option": "30"},
        "Explanation : 20 % of 150 = 0.2 * 150 = 30.\nSo the answer is 30."),
}


@pytest.fixture(scope="module", autouse=True)
def registered():
  cot.register_all()
  cot.register_all()  # idempotent
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


@pytest.fixture(scope="module")
def builder_features(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))  # empty: only the builders' feature definitions are read
  return {d.name: tfds.builder(d.tfds, data_dir=data_dir).info.features for d in cot.DATASETS}


def _text(value):
  value = value.numpy() if hasattr(value, "numpy") else value
  return value.decode()


def _examples(name, split, n=2):
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(None, split=split, shuffle=False, use_cached=False).take(n).as_numpy_iterator())


# ------------------------------------------------------------------ datasets and templates
def test_datasets_are_the_tfds_ones_with_rationales(builder_features):
  assert set(cot.SOURCES) == {"gsm8k", "esnli", "cos_e", "qasc", "math_qa"}
  for d in cot.DATASETS:
    name, version = d.tfds.split(":")
    assert str(tfds.builder_cls(name).VERSION) == version, d.tfds
    assert set(RATIONALE_FEATURES[d.name]) <= set(builder_features[d.name].keys()), d.name


@pytest.mark.parametrize("name", IDS)
def test_templates_reason_then_give_the_fixed_answer_line(name):
  d = DATASETS[name]
  assert len(d.templates) >= 3 and len(set(d.templates)) == len(d.templates)
  for t in d.templates:
    assert t.targets == "{rationale}\n" + cot.ANSWER_LINE == cot.TARGET
    assert t.asks_for_answer
    assert "options" not in t.fields()  # choices are shown as text: no rank classification of a rationale
  instruction.check(dataset_lib.instruction_dataset(d))


@pytest.mark.parametrize("name", IDS)
def test_tasks_render_tokenize_and_pack_on_mock_data(name):
  d = DATASETS[name]
  names = instruction.plan(dataset_lib.instruction_dataset(d))
  assert set(names) == {d.task, f"{d.task}_eval"} | {f"{d.task}_eval_t{i}" for i in range(len(d.templates))}
  for task_name, info in names.items():
    split = "train" if info.kind == "train" else "test"
    rows = _examples(task_name, split, n=1 if info.template is not None else 2)
    assert rows, task_name
    for row in rows:
      inputs, targets = _text(row["inputs_pretokenized"]), _text(row["targets_pretokenized"])
      assert inputs.strip() and "{" not in inputs and "}" not in inputs, (task_name, inputs)
      rationale, _, answer_line = targets.rpartition("\n")
      assert rationale.strip() and answer_line.startswith(cot.ANSWER_PREFIX + " "), (task_name, targets)
      assert answer_line.endswith("."), targets
      assert len(row["inputs"]) > 1 and len(row["targets"]) > 1, task_name  # more than EOS
  vocab = data_lib.vocabulary(d.task)
  packed = seqio.get_dataset(d.task, task_feature_lengths=LENGTHS, dataset_split="train", shuffle=False,
                             use_cached=False, feature_converter=data_lib.feature_converter(True, vocab))
  batch = next(packed.as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (LENGTHS["inputs"] + LENGTHS["targets"],)
  assert (batch["decoder_loss_weights"] > 0).any()  # loss on the rationale and answer tokens
  assert batch["decoder_segment_ids"].max() >= 1


@pytest.mark.parametrize("name", IDS)
def test_hand_written_example_gives_rationale_then_answer(name, builder_features):
  d = DATASETS[name]
  raw_example, expected = EXAMPLES[name]
  spec = builder_features[name]
  raw = spec.deserialize_example(spec.serialize_example(raw_example))
  assert bool(d.filter_fn(raw))
  fields = dict(d.to_fields(raw))
  for i, template in enumerate(d.templates):
    out = templates.apply_random_template(fields, [template], instruction.TEMPLATE_SEED)
    assert _text(out["targets"]) == expected, i
  # The registered evaluation task, all its preprocessors, over the raw example; its postprocessor finds the answer.
  task = seqio.get_mixture_or_task(f"{d.task}_eval")
  ds = task.preprocess_postcache(task.preprocess_precache(tf.data.Dataset.from_tensors(raw)), sequence_length=None)
  (row,) = list(ds.as_numpy_iterator())
  assert _text(row["targets_pretokenized"]) == expected
  answer = expected.rpartition(cot.ANSWER_PREFIX + " ")[2][:-1]
  assert task.postprocess_fn(row["targets_pretokenized"], example=row, is_target=True) == answer


def test_prompts_show_the_choices(builder_features):
  def _raw(name):
    spec = builder_features[name]
    return spec.deserialize_example(spec.serialize_example(EXAMPLES[name][0]))

  fields = dict(DATASETS["cot_math_qa"].to_fields(_raw("cot_math_qa")))
  assert _text(fields["choices"]) == "a) 25\nb) 30\nc) 35\nd) 40\ne) 45"
  fields = dict(DATASETS["cot_qasc"].to_fields(_raw("cot_qasc")))
  assert _text(fields["choices"]) == "OPTIONS:\n- rocks\n- darkness\n- the sun\n- salt water"
  fields = dict(DATASETS["cot_esnli"].to_fields(_raw("cot_esnli")))
  assert _text(fields["choices"]) == "OPTIONS:\n- yes\n- it is not possible to tell\n- no"


@pytest.mark.parametrize("rationale, cleaned", [
    ("\"explanation : 5 + 5 = 10 answer is b\"", "Explanation : 5 + 5 = 10."),
    ("\"10 * 2 = 20 . correct option : c\"", "10 * 2 = 20."),
    ("\"so the total is 45 . hence answer will be ( a )\"", "So the total is 45."),
    ("\"sum is 9 ans : d .\"", "Sum is 9."),
    ("\"the answer is 12 apples\"", "The answer is 12 apples."),  # no option letter: kept
])
def test_math_qa_rationale_loses_its_option_letter(rationale, cleaned):
  raw = {"Problem": tf.constant("p"), "Rationale": tf.constant(rationale), "options": tf.constant("a ) 1 , b ) 2"),
         "correct_option": tf.constant("2")}
  assert _text(cot._math_qa(raw)["rationale"]) == cleaned


# ------------------------------------------------------------------ answers and the metric
@pytest.mark.parametrize("text, answer", [
    ("Two boxes of 6 make 12.\nSo the answer is 12.", "12"),
    ("The store sold 1,250 + 750 = 2,000 cups.\nSo the answer is 2,000.", "2000"),
    ("Half of 9 is 4.5.\nSo the answer is 4.50", "4.5"),
    ("It costs $30.0 in total. So the answer is $30.0.", "30"),
    ("First guess.\nSo the answer is 7.\nWait, I forgot the tax.\nSo the answer is 8.", "8"),
    ("A bank keeps money safe.\nso the answer is bank  \n", "bank"),
    ("Someone riding a bicycle is awake.\nSo the answer is it is not possible to tell.", "it is not possible to tell"),
    ("The sun gives light.\nSo the answer is \"the sun\"!", "the sun"),
    ("I think it is 12, because 3 times 4 is 12.", None),
    ("So the answer is", None),
    ("", None),
])
def test_extract_answer(text, answer):
  assert cot.extract_answer(text) == answer
  assert cot.postprocess(text.encode()) == (answer or "")


def test_eval_metric_scores_the_extracted_answer():
  task = seqio.get_mixture_or_task("flan_cot_gsm8k_eval")
  target = "She buys 2 packs of 600 sheets, 2*600=1200.\nSo the answer is 1200."

  def score(prediction):
    t = task.postprocess_fn(target, example={}, is_target=True)
    p = task.postprocess_fn(prediction, example={}, is_target=False)
    (metric,) = task.predict_metric_fns
    return metric([t], [p])

  assert score("2 packs of 600 is 1,200 sheets.\nSo the answer is 1,200.") == {"exact_match": 100.0}
  assert score("2 packs of 600 is 1,100 sheets.\nSo the answer is 1,100.") == {"exact_match": 0.0}
  assert score("2 packs of 600 is 1,200 sheets.") == {"exact_match": 0.0}  # no answer line
  assert cot.exact_match(["bank", "12", ""], ["Bank", "13", ""]) == {"exact_match": pytest.approx(100 / 3)}


# ------------------------------------------------------------------ clusters, mixtures, the gate
def test_clusters_are_those_of_the_sources():
  expected = {"cot_gsm8k": clusters.MISC, "cot_math_qa": clusters.MISC, "cot_esnli": clusters.NLI,
              "cot_cos_e": clusters.COMMONSENSE, "cot_qasc": clusters.CLOSED_BOOK_QA}
  assert {d.name: d.cluster for d in cot.DATASETS} == expected
  assert flan.by_name("snli").cluster == clusters.NLI  # e-SNLI's source sits where e-SNLI does
  for d in cot.DATASETS:
    for name in task_info.tasks_of(d.task):
      assert task_info.lookup(name).cluster == d.cluster, name


def test_mixtures():
  mixture = seqio.get_mixture_or_task(cot.MIXTURE)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert set(rates) == {f"flan_cot_{n}" for n in ("gsm8k", "math_qa", "esnli", "cos_e", "qasc")}
  for d in cot.DATASETS:
    assert rates[d.task] == min(d.sizes()["train"], cot.MAX_RATE), d.name
  assert rates["flan_cot_gsm8k"] == cot.MAX_RATE == 3_000 < DATASETS["cot_gsm8k"].sizes()["train"] == 7_473 - 500
  evals = {t.name for t in seqio.get_mixture_or_task(cot.EVAL_MIXTURE).tasks}
  assert evals == {d.task + "_eval" for d in cot.DATASETS}
  no_nli = {t.name for t in seqio.get_mixture_or_task("flan_cot_no_nli").tasks}
  assert no_nli == set(rates) - {"flan_cot_esnli"}
  no_misc = {t.name for t in seqio.get_mixture_or_task("flan_cot_no_misc").tasks}
  assert no_misc == {"flan_cot_esnli", "flan_cot_cos_e", "flan_cot_qasc"}


def test_contamination_gate_refuses_training_on_a_held_out_cot_dataset():
  with pytest.raises(contamination.ContaminationError, match="flan_cot_esnli.*cluster nli"):
    contamination.check(cot.MIXTURE, ["flan_cot_esnli_eval"])


# ------------------------------------------------------------------ bad input
def test_dataset_without_rationales_is_refused_in_one_line():
  message = one_line_error(lambda: cot.by_name("snli"), r"no chain-of-thought tasks for dataset 'snli'")
  for name in cot.SOURCES:
    assert name in message
  one_line_error(lambda: cot.register(flan.by_name("rte")), r"'rte'.*datasets with rationales: cos_e, esnli")
  assert cot.by_name("gsm8k") is cot.by_name("flan_cot_gsm8k") is DATASETS["cot_gsm8k"]
