"""Chain-of-thought (CoT) tasks: the CoT sub-mixture of the Flan 2022 recipe (Longpre et al., 2023).

A CoT task asks the model to reason step by step; its target is a human-written rationale followed by
the answer in one fixed form, `ANSWER_LINE` ("So the answer is X."). Only TFDS datasets that ship real
rationales are used:

- GSM8K (`gsm8k`): the worked solution (`annotation`, what precedes `#### ` in `answer`) without its
  calculator marks `<<...>>`; the answer is `short_answer`.
- e-SNLI (`esnli`): `explanation_1` (the only one its training split has); the answer is the SNLI label
  as FLAN's NLI options (yes, it is not possible to tell, no).
- CoS-E (`cos_e`, CommonsenseQA with explanations): `abstractive_explanation` (free text; the extractive
  one is a highlighted span of the question); the answer is `answer`.
- QASC (`qasc`): `fact1`, `fact2`, then `combinedfact` (two facts and the conclusion they support);
  the answer is the choice labelled `answerKey`.
- MathQA (`math_qa`): `Rationale` (AQuA-RAT's), without its closing "answer : c"; the answer is
  `correct_option` (the right option's text, not its letter).

Registration reuses the FLAN machinery (`FlanDataset` for splits, caps and cluster; `instruction.register`
for `NAME`, `NAME_eval`, `NAME_eval_tI`). CoT differs in two ways, both handled here: a dataset has a few
templates rather than FLAN's ten (so `dataset.check`'s rule is not applied), and evaluation tasks get a
postprocessor (`postprocess`: the answer out of the rationale, for the target and the prediction alike)
and exact match on that answer as their metric. The CoT datasets show their choices as text (field
`choices`), not as `options`, so no rank-classification task is made: the target is a rationale, not an
option.

Each dataset carries the FLAN cluster of its source, so `flan_cot_no_X` leaves out what `flan_no_X` does
and the contamination record names the right cluster: e-SNLI is SNLI (nli), CoS-E is CommonsenseQA
(commonsense), QASC is grade-school science answered from memory, like ARC (closed_book_qa); GSM8K and
MathQA are arithmetic word problems, and the collection has no arithmetic cluster: FLAN's one math
dataset (`math_dataset`) is in misc, so they are misc too.
"""

import functools
import re
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from flan_jax import task_info
from flan_jax.errors import UserError
from flan_tasks import instruction
from flan_tasks import templates as templates_lib
from flan_tasks.flan import clusters, features, mixtures
from flan_tasks.flan import dataset as dataset_lib
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# ------------------------------------------------------------------ the answer form
ANSWER_PREFIX = "So the answer is"
ANSWER_LINE = ANSWER_PREFIX + " {answer}."
TARGET = "{rationale}\n" + ANSWER_LINE  # every CoT template's target: rationale, then the answer line

# Per-task cap of the `flan_cot` mixture rates. Not from the paper: its per-task cap for the CoT
# sub-mixture is not known to us, so the FLAN collection's own cap is used (mixtures.MAX_RATE).
MAX_RATE = mixtures.MAX_RATE
RATE = functools.partial(seqio.mixing_rate_num_examples, maximum=MAX_RATE)
PREFIX = "cot_"  # dataset names: cot_gsm8k (task flan_cot_gsm8k), ...
MIXTURE = "flan_cot"
EVAL_MIXTURE = "flan_cot_eval"

_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r"[ \t]*([^\n]*)", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\$?\d[\d,]*(\.\d+)?")


def _normalise_number(text: str) -> str:
  """ "1,234.0" -> "1234", "$5.50" -> "5.5": commas, a currency sign and zero decimals removed."""
  text = text.replace(",", "").replace("$", "")
  if "." in text:
    text = text.rstrip("0").rstrip(".")
  return text or "0"


def extract_answer(text: str) -> Optional[str]:
  """The answer of the last `ANSWER_PREFIX` line of a generated text, or None when there is none.

  The answer runs to the end of its line; surrounding whitespace, a final period (or other closing
  punctuation) and quotes are dropped; a number loses its thousands commas and zero decimals.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  found = _ANSWER.findall(text)
  if not found:
    return None
  answer = found[-1].strip().rstrip(".!?,;:").strip().strip("\"'").strip()
  if _NUMBER.fullmatch(answer):
    answer = _normalise_number(answer)
  return answer or None


def postprocess(text, example=None, is_target=False) -> str:
  """seqio postprocessor of the `_eval` tasks: the extracted answer ("" when absent), for targets
  (rationale + answer line) and predictions alike."""
  del example, is_target
  return extract_answer(text) or ""


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict:
  """Percentage of predictions whose extracted answer equals the target's (ignoring case).
  An example whose target has no answer counts as wrong."""
  hits = [bool(t) and t.casefold() == p.casefold() for t, p in zip(targets, predictions)]
  return {"exact_match": 100.0 * sum(hits) / max(1, len(hits))}


# ------------------------------------------------------------------ templates
def _templates(*prompts: str) -> list[T]:
  return [T(prompt, TARGET) for prompt in prompts]


MATH_WORD_PROBLEM = _templates(
    "{question}\n\nWork it out step by step, then give the number.",
    "Solve this word problem. Show each step of the reasoning before the final answer.\n\n{question}",
    "Problem: {question}\nReason through it one step at a time.",
    "Here is a maths question from a grade-school test: {question}\nExplain how to get the answer.",
)

MATH_CHOICE = _templates(
    "{problem}\nChoices:\n{choices}\n\nThink it through step by step before picking a choice.",
    "Solve the problem below, showing the steps, and give the value of the right choice.\n\n{problem}\n"
    "{choices}",
    "Question: {problem}\nPossible answers:\n{choices}\nReason carefully first.",
)

NLI = _templates(
    "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? Explain your "
    "reasoning first.\n{choices}",
    "{premise}\n\nBased on that, can we say \"{hypothesis}\"? Think about it step by step.\n{choices}",
    "Read the two sentences and reason about whether the second follows from the first.\n{premise}\n"
    "{hypothesis}\n{choices}",
)

COMMONSENSE_CHOICE = _templates(
    "{question}\n{choices}\nUse common sense and explain your choice before giving it.",
    "Answer the question with everyday knowledge, reasoning out loud first.\n\n{question}\n{choices}",
    "Q: {question}\n{choices}\nLet's think about which option makes sense.",
)

SCIENCE_CHOICE = _templates(
    "{question}\n{choices}\nRecall the facts that matter, then answer.",
    "Answer this science question. Name the facts that lead to the answer first.\n\n{question}\n{choices}",
    "Question: {question}\n{choices}\nReason from what you know about science, step by step.",
)


# ------------------------------------------------------------------ fields
def _sentence(text) -> tf.Tensor:
  """Stripped, with a capital first letter and a closing period when it has no closing punctuation."""
  text = tf.strings.strip(text)
  text = tf.strings.join([tf.strings.upper(tf.strings.substr(text, 0, 1)),
                          tf.strings.substr(text, 1, tf.strings.length(text))])
  closed = tf.strings.regex_full_match(text, r"(?s).*[.!?]\s*")
  empty = tf.equal(tf.strings.length(text), 0)
  return tf.where(closed | empty, text, tf.strings.join([text, "."]))


def _choices_block(choices) -> tf.Tensor:
  """The choices as a list the prompt shows ("OPTIONS:" and one "- choice" a line)."""
  return templates_lib.options_block(tf.reshape(choices, [-1]))


def _gsm8k(ex):
  rationale = tf.strings.regex_replace(ex["annotation"], r"<<[^>]*>>", "")
  return {"question": ex["question"], "rationale": tf.strings.strip(rationale),
          "answer": tf.strings.strip(ex["short_answer"])}


_TRAILING_CHOICE = (r"(?i)[\s.,;:]*((hence|so|therefore|thus)[\s,]*)?(the\s+)?(correct\s+)?"
                    r"(answer|option|ans)\w*\s*(is|will be|should be)?\s*[:=-]?\s*(option\s*)?[:=-]?\s*"
                    r"\(?\s*[a-e]\s*\)?\s*[.!]?\s*$")


def _math_qa(ex):
  rationale = tf.strings.strip(tf.strings.regex_replace(ex["Rationale"], r"^\s*\"|\"\s*$", ""))
  rationale = tf.strings.regex_replace(rationale, _TRAILING_CHOICE, "")
  options = tf.strings.regex_replace(ex["options"], r"^\s*\[|\]\s*$|'", "")
  options = tf.strings.regex_replace(options, r"\s*,?\s*\b([a-e]) \)\s*", "\n\\1) ")
  return {"problem": tf.strings.strip(ex["Problem"]), "choices": tf.strings.strip(options),
          "rationale": _sentence(rationale), "answer": tf.strings.strip(ex["correct_option"])}


_NLI_OPTIONS = ("yes", "it is not possible to tell", "no")  # esnli: entailment, neutral, contradiction


def _esnli(ex):
  return {"premise": ex["premise"], "hypothesis": ex["hypothesis"],
          "choices": _choices_block(tf.constant(_NLI_OPTIONS)),
          "rationale": _sentence(ex["explanation_1"]), "answer": features.pick(_NLI_OPTIONS, ex["label"])}


def _cos_e(ex):
  return {"question": ex["question"], "choices": _choices_block(ex["choices"]),
          "rationale": _sentence(ex["abstractive_explanation"]), "answer": ex["answer"]}


def _qasc(ex):
  choices = ex["choices"]
  texts = tf.reshape(choices["text"], [-1])
  matches = tf.where(tf.equal(tf.reshape(choices["label"], [-1]), ex["answerKey"]))[:, 0]
  index = tf.concat([tf.cast(matches, tf.int32), [0]], 0)[0]
  rationale = tf.strings.join([_sentence(ex["fact1"]), _sentence(ex["fact2"]),
                               _sentence(ex["combinedfact"])], separator=" ")
  return {"question": ex["question"], "choices": _choices_block(texts), "rationale": rationale,
          "answer": features.pick(texts, index)}


def _present(*keys):
  """A filter keeping examples whose features `keys` are not blank (the rationale and the answer)."""
  def keep(ex):
    return tf.reduce_all([tf.strings.length(tf.strings.strip(ex[k])) > 0 for k in keys])
  return keep


def _dataset(name, cluster, paper_name, tfds, train_size, to_fields, fields, templates, keys,
             test_split="validation"):
  return FlanDataset(
      name=PREFIX + name, cluster=cluster, paper_name=f"{paper_name} (CoT)", tfds=tfds,
      train_size=train_size, to_fields=to_fields, fields=fields + ("rationale", "answer"),
      templates=templates, metric_fns=(exact_match,), test_split=test_split, filter_fn=_present(*keys))


# Training split sizes from the TFDS catalogue.
DATASETS: tuple[FlanDataset, ...] = (
    _dataset("gsm8k", clusters.MISC, "GSM8K", "gsm8k:1.0.0", 7_473, _gsm8k, ("question",),
             MATH_WORD_PROBLEM, ("annotation", "short_answer"), test_split="test"),
    _dataset("math_qa", clusters.MISC, "MathQA", "math_qa:1.0.0", 29_837, _math_qa, ("problem", "choices"),
             MATH_CHOICE, ("Rationale", "correct_option")),
    _dataset("esnli", clusters.NLI, "e-SNLI", "esnli:0.1.0", 549_367, _esnli,
             ("premise", "hypothesis", "choices"), NLI, ("explanation_1",)),
    _dataset("cos_e", clusters.COMMONSENSE, "CoS-E", "cos_e:0.0.1", 9_741, _cos_e, ("question", "choices"),
             COMMONSENSE_CHOICE, ("abstractive_explanation", "answer")),
    _dataset("qasc", clusters.CLOSED_BOOK_QA, "QASC", "qasc:0.1.0", 8_134, _qasc, ("question", "choices"),
             SCIENCE_CHOICE, ("fact1", "fact2", "combinedfact")),
)
SOURCES = {d.tfds.split(":")[0]: d for d in DATASETS}  # TFDS builder name -> its CoT dataset


def by_name(name: str) -> FlanDataset:
  """The CoT dataset of a TFDS builder or dataset name (`gsm8k`, `cot_gsm8k`, `flan_cot_gsm8k`);
  a UserError, naming the datasets that have rationales, for any other."""
  key = name.removeprefix(dataset_lib.PREFIX).removeprefix(PREFIX)
  if key not in SOURCES:
    raise UserError(f"no chain-of-thought tasks for dataset {name!r}: it ships no rationales; "
                    f"datasets with rationales: {', '.join(sorted(SOURCES))}")
  return SOURCES[key]


# ------------------------------------------------------------------ registration
def _with_postprocessor(name: str) -> None:
  """Re-adds the evaluation task `name` with `postprocess` (the task is otherwise unchanged)."""
  task = seqio.get_mixture_or_task(name)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=task.source, preprocessors=task.preprocessors,
                         output_features=task.output_features, postprocess_fn=postprocess,
                         metric_fns=[exact_match], shuffle_buffer_size=task.shuffle_buffer_size)


def register(dataset: FlanDataset) -> list[str]:
  """Registers a CoT dataset's tasks: `flan_cot_X` (training), `flan_cot_X_eval` and one
  `flan_cot_X_eval_tI` per template (extracted answer, exact match). Returns their names."""
  by_name(dataset.name)
  if "options" in dataset.fields:
    raise UserError(f"CoT dataset {dataset.name}: show choices in a field other than 'options'")
  base = dataset_lib.instruction_dataset(dataset)
  names = instruction.register(base)
  for name, info in instruction.plan(base).items():
    if info.kind == "generative":
      _with_postprocessor(name)
  return names


def train_tasks(cluster_names: Sequence[str] = clusters.CLUSTERS) -> list[str]:
  """The CoT training tasks of the datasets in the given clusters."""
  return mixtures.train_tasks(DATASETS, cluster_names)


def definitions() -> Mapping[str, tuple[list[str], bool]]:
  """Mixture name -> (task names, whether rates are by example count): `flan_cot`, `flan_cot_eval`,
  and `flan_cot_no_X` (the CoT tasks `flan_no_X` may be mixed with: X and its overlaps left out)."""
  out = {MIXTURE: (train_tasks(), True),
         EVAL_MIXTURE: ([task_info.eval_task(d.task) for d in DATASETS], False)}
  for cluster in clusters.CLUSTERS:
    kept = train_tasks(clusters.training_clusters(cluster))
    if kept:
      out[f"{MIXTURE}_no_{cluster}"] = (kept, True)
  return out


_registered = False


def register_all() -> None:
  """Registers every CoT task and mixture with seqio (idempotent)."""
  global _registered
  if _registered:
    return
  for d in DATASETS:
    register(d)
  for name, (tasks, by_size) in definitions().items():
    seqio.MixtureRegistry.add(name, tasks, default_rate=RATE if by_size else 1.0)
  _registered = True
