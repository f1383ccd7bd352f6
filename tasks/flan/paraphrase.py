"""Paraphrase detection: MRPC, QQP, PAWS (Wiki), and STS-B (similarity on a 0-5 scale)."""

import tensorflow as tf

from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

YES_NO = ("no", "yes")
SCORES = ("0", "1", "2", "3", "4", "5")


def same_meaning_templates(things: str) -> list[T]:
  """first, second -> no / yes, phrased for a kind of text pair ("sentences", "questions")."""
  return [
      T(f"Do these two {things} mean the same thing?\n\n{{first}}\n{{second}}\n{{options_}}"),
      T("First: {first}\nSecond: {second}\nAre they paraphrases of each other?\n{options_}"),
      T(f"{{first}}\n{{second}}\n\nAre the two {things} above saying the same?\n{{options_}}"),
      T(f"Here are two {things}: \"{{first}}\" and \"{{second}}\". Is the meaning identical?\n"
        "{options_}"),
      T(f"Decide if the following {things} are semantically equivalent.\n"
        "A: {first}\nB: {second}\n{options_}"),
      T("Would you say \"{first}\" and \"{second}\" express the same idea?\n{options_}"),
      T(f"Compare the {things}.\n1. {{first}}\n2. {{second}}\nSame meaning?\n{{options_}}"),
      T("Is the second text a rewording of the first?\n{first}\n{second}\n{options_}"),
      T(f"Write a text that, compared with \"{{first}}\", answers the question \"do these "
        f"{things} mean the same?\" with \"{{answer}}\".", "{second}"),
      T("Given \"{first}\", write another one. Same meaning as the first: {answer}.",
        "{second}"),
  ]


# first, second -> 0..5 similarity
SIMILARITY = [
    T("How similar are these two sentences, from 0 (unrelated) to 5 (same meaning)?\n\n"
      "{first}\n{second}\n{options_}"),
    T("Sentence 1: {first}\nSentence 2: {second}\nRate their similarity on a scale of 0 to 5.\n"
      "{options_}"),
    T("{first}\n{second}\n\nGive a similarity score between 0 and 5 for the two sentences "
      "above.\n{options_}"),
    T("On a 0-5 scale, how close in meaning are \"{first}\" and \"{second}\"?\n{options_}"),
    T("Score the semantic overlap (0 = none, 5 = complete).\nA: {first}\nB: {second}\n{options_}"),
    T("Compare \"{first}\" with \"{second}\". How alike are they, 0 to 5?\n{options_}"),
    T("Here are two sentences.\n- {first}\n- {second}\nTheir similarity (0-5) is:\n{options_}"),
    T("Rate from 0 to 5: do these say the same thing?\n{first}\n{second}\n{options_}"),
    T("Sentence: {first}\nWrite another sentence whose similarity to it, on a 0-5 scale, is "
      "{answer}.", "{second}"),
    T("Write a sentence that scores {answer} out of 5 for similarity with: {first}", "{second}"),
]


def _pair(name, paper_name, tfds, train_size, things, first="sentence1", second="sentence2"):
  return FlanDataset(
      name=name, cluster=clusters.PARAPHRASE, paper_name=paper_name, tfds=tfds,
      train_size=train_size,
      to_fields=features.classification(YES_NO, first=first, second=second),
      fields=("first", "second", "answer", "options"), templates=same_meaning_templates(things))


def _stsb(ex):
  score = tf.cast(tf.round(tf.clip_by_value(ex["label"], 0.0, 5.0)), tf.int32)
  return {"first": ex["sentence1"], "second": ex["sentence2"], "options": tf.constant(SCORES),
          "answer": features.pick(SCORES, score)}


DATASETS = [
    _pair("mrpc", "MRPC", "glue/mrpc:2.0.0", 3_668, "sentences"),
    _pair("qqp", "QQP", "glue/qqp:2.0.0", 363_846, "questions", first="question1",
          second="question2"),
    _pair("paws_wiki", "PAWS", "paws_wiki/labeled_final_raw:1.1.0", 49_401, "sentences"),
    FlanDataset(
        name="stsb", cluster=clusters.PARAPHRASE, paper_name="STS-B", tfds="glue/stsb:2.0.0",
        train_size=5_749, to_fields=_stsb, fields=("first", "second", "answer", "options"),
        templates=SIMILARITY),
]
