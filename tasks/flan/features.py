"""TensorFlow helpers that turn raw TFDS features into the string fields templates read.

They are written to be total: an out-of-range label or an empty sequence (which mock data
produces) gives a defined string instead of an error.
"""

import tensorflow as tf


def pick(options, index) -> tf.Tensor:
  """`options[index]`, with the index wrapped into range (real labels are already in range)."""
  options = tf.convert_to_tensor(options)
  index = tf.math.floormod(tf.cast(index, tf.int32), tf.shape(options)[0])
  return tf.gather(options, index)


def first(sequence, default="") -> tf.Tensor:
  """The first string of a string tensor, or `default` (a string or scalar) when it is empty."""
  default = tf.reshape(tf.convert_to_tensor(default, tf.string), [1])
  return tf.concat([tf.reshape(sequence, [-1]), default], axis=0)[0]


def choose(condition, if_true: str, if_false: str) -> tf.Tensor:
  return tf.where(tf.cast(condition, tf.bool), tf.constant(if_true), tf.constant(if_false))


def join(strings, separator: str) -> tf.Tensor:
  return tf.strings.reduce_join(tf.reshape(strings, [-1]), separator=separator)


def numbered(strings) -> tf.Tensor:
  """["a", "b"] -> "1. a\\n2. b"."""
  strings = tf.reshape(strings, [-1])
  numbers = tf.strings.as_string(tf.range(1, tf.size(strings) + 1))
  return join(tf.strings.join([numbers, strings], separator=". "), "\n")


def table_text(table) -> tf.Tensor:
  """A TFDS `table` (column_header, content) as "header: content | header: content"."""
  headers = tf.reshape(table["column_header"], [-1])
  contents = tf.reshape(table["content"], [-1])
  n = tf.minimum(tf.size(headers), tf.size(contents))  # equal in real data
  cells = tf.strings.join([headers[:n], contents[:n]], separator=": ")
  return join(cells, " | ")


def non_empty(text, default: str) -> tf.Tensor:
  """`text`, or `default` when it is empty or only whitespace."""
  blank = tf.equal(tf.strings.length(tf.strings.strip(text)), 0)
  return tf.where(blank, tf.constant(default), text)


def strip_punctuation(text) -> tf.Tensor:
  """Lower-cases and removes punctuation: the input side of the fix-punctuation task."""
  text = tf.strings.regex_replace(tf.strings.lower(text), r"[^\w\s]", "")
  return tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))


def renamed(example, renames) -> dict:
  """{new_name: example[old_name]} for the `renames` mapping new -> old."""
  return {new: example[old] for new, old in renames.items()}


def classification(option_by_label, label: str = "label", **renames):
  """A `to_fields` for datasets with a class label: options are the label texts in label order.

  `renames` maps template field names to raw feature names.
  """
  options = list(option_by_label)

  def to_fields(ex):
    out = renamed(ex, renames)
    out["options"] = tf.constant(options)
    out["answer"] = pick(options, ex[label])
    return out
  return to_fields


def generation(answer: str, **renames):
  """A `to_fields` for text-to-text datasets: `answer` names the raw target feature."""

  def to_fields(ex):
    out = renamed(ex, renames)
    out["answer"] = ex[answer]
    return out
  return to_fields
