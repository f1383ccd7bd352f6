"""Instruction templates: parse and validate them, and render them over tf.data examples.

A template is a pair of format strings, one for the model input and one for the target, with
`{field}` placeholders naming string features of an example. The special placeholder
`{options_}` renders the example's `options` feature as an "OPTIONS:" block, one option a line.
A decoder reads `prompt + delimiter + target`; the delimiter is the template's own, else its
dataset's, else a space unless the prompt ends in whitespace (flan_jax.text.formats).
"""

import dataclasses
import string
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from flan_jax.errors import UserError
from flan_jax.text import formats

OPTIONS_PLACEHOLDER = "options_"
OPTIONS_FIELD = "options"
ANSWER_FIELD = "answer"


class TemplateError(UserError):
  """A template names a field that its dataset does not provide, or is malformed."""


@dataclasses.dataclass(frozen=True)
class Template:
  inputs: str
  targets: str = "{answer}"
  delimiter: Optional[str] = None  # between the prompt and the target; None: the default rule

  def __post_init__(self):
    if not isinstance(self.inputs, str) or not isinstance(self.targets, str):
      raise TemplateError(f"template {self.inputs!r} -> {self.targets!r}: the prompt and the target must "
                          "be strings")
    if not _names(self.targets) and not self.targets.strip():
      raise TemplateError(f"template {self.inputs[:40]!r}: the target is empty; give it a field, "
                          "such as '{answer}'")
    formats.check_delimiter(self.delimiter, f"template {self.inputs[:40]!r}")

  @property
  def asks_for_answer(self) -> bool:
    """True unless the template turns the task around (its target is not the answer)."""
    return ANSWER_FIELD in _names(self.targets)

  def fields(self) -> set[str]:
    """Names of the example features this template reads (`{options_}` reads `options`)."""
    names = _names(self.inputs) | _names(self.targets)
    return {OPTIONS_FIELD if name == OPTIONS_PLACEHOLDER else name for name in names}


def _names(text: str) -> set[str]:
  return {name for _, name, _, _ in _parse(text) if name is not None}


def _parse(text: str):
  try:
    pieces = list(string.Formatter().parse(text))
  except ValueError as e:
    raise TemplateError(f"cannot parse template {text!r}: {e}") from e
  for _, name, spec, conv in pieces:
    if name is not None and (not name.isidentifier() or spec or conv):
      raise TemplateError(
          f"placeholder {{{name}}} in template {text!r} must be a plain field name")
  return pieces


def validate(task_name: str, templates: Sequence[Template], fields: Sequence[str]) -> None:
  """Raises TemplateError naming the task, template and field when a field is missing."""
  if not templates:
    raise TemplateError(f"task {task_name}: needs at least one template")
  available = set(fields)
  for i, template in enumerate(templates):
    missing = sorted(template.fields() - available)
    if missing:
      raise TemplateError(
          f"task {task_name}: template {i} ({template.inputs[:40]!r}...) uses field "
          f"'{missing[0]}', which the dataset does not provide; "
          f"available fields: {', '.join(sorted(available))}")


def input_fields(templates: Sequence[Template]) -> list[str]:
  """The fields the first answer template shows, in the order it shows them (no options, no answer)."""
  template = next(t for t in templates if t.asks_for_answer)
  seen = []
  for _, name, _, _ in _parse(template.inputs):
    if name and name not in seen and name not in (OPTIONS_PLACEHOLDER, ANSWER_FIELD):
      seen.append(name)
  return seen


def raw_template(templates: Sequence[Template], with_options: bool, prefix: str = "") -> Template:
  """The no-instruction format of a dataset: `prefix`, then the input fields its first answer
  template shows, one a line, then (for a dataset with options) the options list."""
  text = prefix + "\n".join("{%s}" % name for name in input_fields(templates))
  return Template(text + "\n{options_}" if with_options else text)


def options_block(options: tf.Tensor) -> tf.Tensor:
  """`["yes", "no"]` -> "OPTIONS:\\n- yes\\n- no"."""
  return tf.strings.join(["OPTIONS:\n- ", tf.strings.reduce_join(options, separator="\n- ")])


def render(text: str, example: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Fills a format string from an example's string features inside a tf.data graph.

  Scalar fields give a scalar string; a vector field broadcasts, giving one string per entry
  (this is how rank classification renders one target per option).
  """
  parts = []
  for literal, name, _, _ in _parse(text):
    if literal:
      parts.append(tf.constant(literal))
    if name is None:
      continue
    if name == OPTIONS_PLACEHOLDER:
      parts.append(options_block(example[OPTIONS_FIELD]))
    else:
      parts.append(example[name])
  if not parts:
    return tf.constant("")
  return tf.strings.join(parts)


def choose_template(example: Mapping[str, tf.Tensor], num_templates: int, seed: int) -> tf.Tensor:
  """A template index that depends only on the example's content and the seed.

  Hashing the content (rather than drawing from a random stream) keeps the choice the same
  whatever the order, sharding or shuffling of the data.
  """
  keys = sorted(k for k, v in example.items() if v.dtype == tf.string)
  flat = [tf.strings.reduce_join(tf.reshape(example[k], [-1]), separator="\x1f") for k in keys]
  key = tf.strings.join([tf.constant(str(seed))] + flat, separator="\x1e")
  return tf.strings.to_hash_bucket_strong(key, num_templates, [seed, 0x5EED])


def delimiters(templates: Sequence[Template], prompts: Sequence[tf.Tensor],
               default: Optional[str] = None) -> tf.Tensor:
  """Each template's delimiter for its rendered prompt: its own, else `default`, else the rule."""
  return tf.stack([formats.tf_delimiter(prompt, t.delimiter if t.delimiter is not None else default)
                   for t, prompt in zip(templates, prompts)])


def apply_random_template(example: Mapping[str, tf.Tensor], templates: Sequence[Template],
                          seed: int, delimiter: Optional[str] = None) -> dict[str, tf.Tensor]:
  """Renders one seeded-random template per example into `inputs`, `targets` and the delimiter."""
  index = choose_template(example, len(templates), seed)
  prompts = [render(t.inputs, example) for t in templates]
  targets = tf.stack([render(t.targets, example) for t in templates])
  out = dict(example)
  out.update(inputs=tf.gather(tf.stack(prompts), index), targets=tf.gather(targets, index),
             template_index=tf.cast(index, tf.int32))
  out[formats.DELIMITER] = tf.gather(delimiters(templates, prompts, delimiter), index)
  return out
