"""Sentiment analysis: IMDB, Sentiment140, SST-2, Yelp (polarity)."""

import tensorflow as tf

from flan_tasks.flan import clusters, features
from flan_tasks.flan.dataset import FlanDataset
from flan_tasks.templates import Template as T

POLARITY = ("negative", "positive")


def polarity_templates(thing: str) -> list[T]:
  """text -> negative / positive, phrased for one kind of text ("movie review", "tweet")."""
  return [
      T(f"{{text}}\n\nIs this {thing} positive or negative?\n{{options_}}"),
      T(f"What is the sentiment of the following {thing}?\n\n{{text}}\n{{options_}}"),
      T(f"{thing.capitalize()}: {{text}}\nDid the writer like it?\n{{options_}}"),
      T(f"Read this {thing} and tell me how the author feels.\n{{text}}\n{{options_}}"),
      T(f"{{text}}\nHow would you describe the tone of this {thing}?\n{{options_}}"),
      T(f"Classify the {thing} below as positive or negative.\n\n{{text}}\n{{options_}}"),
      T(f"Here is a {thing}: \"{{text}}\"\nIs the opinion favourable?\n{{options_}}"),
      T(f"Decide whether the following {thing} expresses a good or bad feeling. {{text}}\n"
        "{options_}"),
      T(f"Write a {{answer}} {thing}.", "{text}"),
      T(f"Generate a short {thing} with a {{answer}} sentiment.", "{text}"),
  ]


def _binary(name, paper_name, tfds, train_size, thing, text="text", test_split="validation"):
  return FlanDataset(
      name=name, cluster=clusters.SENTIMENT, paper_name=paper_name, tfds=tfds,
      train_size=train_size, to_fields=features.classification(POLARITY, text=text),
      fields=("text", "answer", "options"), templates=polarity_templates(thing),
      test_split=test_split)


def _sentiment140(ex):
  return {"text": ex["text"], "options": tf.constant(POLARITY),
          "answer": features.choose(ex["polarity"] > 2, "positive", "negative")}


DATASETS = [
    _binary("imdb", "IMDB", "imdb_reviews/plain_text:1.0.0", 25_000, "movie review",
            test_split="test"),
    _binary("sst2", "SST-2", "glue/sst2:2.0.0", 67_349, "movie review sentence",
            text="sentence"),
    _binary("yelp", "Yelp", "yelp_polarity_reviews:0.2.0", 560_000, "restaurant review",
            test_split="test"),
    FlanDataset(
        name="sentiment140", cluster=clusters.SENTIMENT, paper_name="Sent140",
        tfds="sentiment140:1.0.0", train_size=1_600_000, to_fields=_sentiment140,
        fields=("text", "answer", "options"), templates=polarity_templates("tweet"),
        test_split="test", filter_fn=lambda ex: tf.not_equal(ex["polarity"], 2)),  # no neutral
]
