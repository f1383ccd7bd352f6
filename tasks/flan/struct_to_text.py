"""Struct to text: CommonGen, DART, E2E NLG, WebNLG (data or concepts -> a fluent sentence)."""

from flan_tasks import metrics
from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

# data (linearised "key: value | ..." records) -> text
DATA_TO_TEXT = [
    T("Data: {data}\n\nWrite a sentence that describes this data."),
    T("Turn the following facts into a short piece of text.\n{data}"),
    T("{data}\n\nDescribe the information above in plain English."),
    T("Here are some data: {data}. Generate a descriptive sentence."),
    T("Write one or two sentences expressing all of this:\n{data}"),
    T("Facts: {data}\nSentence:"),
    T("Verbalise these records as natural text: {data}"),
    T("Produce a fluent description from the structured input below.\n\n{data}"),
    T("Sentence: {answer}\n\nList the facts this sentence states, as \"key: value\" pairs.",
      "{data}"),
    T("What structured data could be extracted from this text?\n{answer}", "{data}"),
]

# concepts ("a, b, c") -> a sentence using them all
CONCEPTS = [
    T("Concepts: {concepts}\n\nWrite a sentence that includes all these words."),
    T("Make an everyday sentence using the following words: {concepts}"),
    T("{concepts}\n\nCombine the words above into one natural sentence."),
    T("Write a sentence about a common scene that mentions {concepts}."),
    T("Use each of these in one sentence: {concepts}"),
    T("Words: {concepts}\nA sentence containing them:"),
    T("Here is a list of concepts: {concepts}. Describe a situation involving all of them."),
    T("Generate a sensible sentence with the keywords {concepts}."),
    T("Sentence: {answer}\n\nWhich key concepts appear in this sentence?", "{concepts}"),
    T("Pick out the main nouns and verbs of this sentence, separated by commas: {answer}",
      "{concepts}"),
]


def _table(ex):
  return {"data": features.table_text(ex["input_text"]["table"]), "answer": ex["target_text"]}


def _data(name, paper_name, tfds, train_size):
  return FlanDataset(
      name=name, cluster=clusters.STRUCT_TO_TEXT, paper_name=paper_name, tfds=tfds,
      train_size=train_size, to_fields=_table, fields=("data", "answer"),
      templates=DATA_TO_TEXT, metric_fns=metrics.GENERATION)


DATASETS = [
    FlanDataset(
        name="common_gen", cluster=clusters.STRUCT_TO_TEXT, paper_name="CommonGen",
        tfds="gem/common_gen:1.1.0", train_size=67_389,
        to_fields=lambda ex: {"concepts": features.join(ex["concepts"], ", "),
                              "answer": ex["target"]},
        fields=("concepts", "answer"), templates=CONCEPTS, metric_fns=metrics.GENERATION),
    _data("dart", "DART", "dart:0.1.0", 62_659),
    _data("e2e_nlg", "E2ENLG", "e2e_cleaned:0.1.0", 33_525),
    _data("web_nlg", "WebNLG", "web_nlg:0.1.0", 35_426),
]
