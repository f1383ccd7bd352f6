"""Closed-book question answering: ARC (easy, challenge), Natural Questions, TriviaQA."""

import tensorflow as tf

from flan_tasks import metrics
from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# question, options -> answer
SCIENCE_CHOICE = [
    T("{question}\n{options_}"),
    T("Answer this grade-school science question.\n\n{question}\n{options_}"),
    T("Question: {question}\nWhich of the choices is correct?\n{options_}"),
    T("Pick the best answer to the following.\n{question}\n{options_}"),
    T("Here is a science test question: {question}\nSelect the answer.\n{options_}"),
    T("Q: {question}\nChoose one option.\n{options_}"),
    T("What is the correct answer to \"{question}\"?\n{options_}"),
    T("Use what you know about science: {question}\n{options_}"),
    T("Think carefully, then answer.\n\n{question}\n{options_}"),
    T("Write a multiple-choice science question whose correct answer is \"{answer}\".",
      "{question}"),
]

# question -> answer (from memory, no context)
TRIVIA = [
    T("{question}"),
    T("Answer this question: {question}"),
    T("Q: {question}\nA:"),
    T("Please answer the following question from general knowledge.\n{question}"),
    T("Question: {question}\nAnswer:"),
    T("What is the answer to this trivia question? {question}"),
    T("{question}\n\nGive a short answer."),
    T("Quiz time! {question}"),
    T("Write a trivia question whose answer is \"{answer}\".", "{question}"),
    T("The answer is {answer}. What could the question be?", "{question}"),
]


def _arc(ex):
  choices = ex["choices"]
  options = tf.reshape(choices["text"], [-1])
  matches = tf.where(tf.equal(tf.cast(choices["label"], tf.int64), ex["answerKey"]))[:, 0]
  index = tf.concat([tf.cast(matches, tf.int32), [0]], 0)[0]
  return {"question": ex["question"], "options": options,
          "answer": features.pick(options, index)}


def _arc_dataset(name, paper_name, config, train_size):
  return FlanDataset(
      name=name, cluster=clusters.CLOSED_BOOK_QA, paper_name=paper_name,
      tfds=f"ai2_arc/{config}:1.0.0", train_size=train_size, to_fields=_arc,
      fields=("question", "answer", "options"), templates=SCIENCE_CHOICE)


DATASETS = [
    _arc_dataset("arc_easy", "ARC (easy)", "ARC-Easy", 2_251),
    _arc_dataset("arc_challenge", "ARC (challenge)", "ARC-Challenge", 1_119),
    FlanDataset(
        name="natural_questions", cluster=clusters.CLOSED_BOOK_QA, paper_name="Natural Questions",
        tfds="natural_questions_open:1.0.0", train_size=87_925,
        to_fields=lambda ex: {"question": ex["question"],
                              "answer": features.first(ex["answer"], "unknown")},
        fields=("question", "answer"), templates=TRIVIA, metric_fns=metrics.QA),
    FlanDataset(
        name="trivia_qa", cluster=clusters.CLOSED_BOOK_QA, paper_name="TriviaQA",
        tfds="trivia_qa/rc.nocontext:1.1.0", train_size=138_384,
        to_fields=lambda ex: {"question": ex["question"], "answer": ex["answer"]["value"]},
        fields=("question", "answer"), templates=TRIVIA, metric_fns=metrics.QA),
]
