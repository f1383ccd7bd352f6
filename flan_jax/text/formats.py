"""How a decoder reads an example: the run's example format, chat templates, and the tokenizing step.

`prompt` (the default) is one stream `prompt + delimiter + target + EOS`, tokenized as
lm-evaluation-harness tokenizes a context and its continuation; `chat` renders the prompt as the
user turn and the target as the assistant turn of the model's own chat template; `t5` is the old
encoder-decoder shape (prompt and target tokenized apart, EOS after each), kept only on request.
The format is chosen in gin (`example_format.name`), recorded beside the run's vocabulary
(`format.json` of `describe`, which flan_jax.checkpoints.run_record writes and reads), and followed by
eval and export.
"""

import datetime
import json
from typing import Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from flan_jax.errors import UserError
from flan_jax.text import records, run

FORMATS = records.FORMATS  # the names format.json may hold (run_record checks them without seqio)
DEFAULT = records.DEFAULT_FORMAT
DELIMITER = "target_delimiter"  # the per-example feature holding the text between prompt and target
ROLES = ("train", "score", "generate")


# ---------------------------------------------------------------------------------------------
# The delimiter between prompt and target.


def tf_delimiter(prompt: tf.Tensor, delimiter: Optional[str]) -> tf.Tensor:
  """`delimiter`, or where it is None lm-evaluation-harness's convention for the rendered prompt (in a
  tf.data graph): a space, unless the prompt is empty or ends in whitespace."""
  if delimiter is not None:
    return tf.constant(delimiter)
  ends_in_space = tf.strings.regex_full_match(prompt, r"(?s)(.*[ \n\t])?")
  return tf.where(ends_in_space, "", " ")


def check_delimiter(delimiter, where: str) -> None:
  if delimiter is not None and not isinstance(delimiter, str):
    raise UserError(f"{where}: the delimiter must be a string (or None for the default: a space unless "
                    f"the prompt ends in whitespace), not {delimiter!r}")


# ---------------------------------------------------------------------------------------------
# Chat templates, rendered as transformers' apply_chat_template renders them.


def _environment():
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top

  class Generation(ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks the assistant's tokens): renders its body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[Generation, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


_compiled: dict = {}


def render_chat(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool,
                special_tokens: Mapping[str, Optional[str]]) -> str:
  """The text of `messages` under a jinja2 chat template (bos_token, eos_token, ... as variables)."""
  if template not in _compiled:
    _compiled[template] = _environment().from_string(template)
  return _compiled[template].render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                    tools=None, documents=None, **special_tokens)


def chat_turns(template: str, prompt: str, target: str,
               special_tokens: Mapping[str, Optional[str]]) -> tuple[str, str]:
  """(the generation prompt after the user turn `prompt`, the assistant turn `target` after it)."""
  user = [{"role": "user", "content": prompt}]
  head = render_chat(template, user, True, special_tokens)
  whole = render_chat(template, user + [{"role": "assistant", "content": target}], False, special_tokens)
  if not whole.startswith(head):
    raise UserError("the chat template's generation prompt is not the start of the rendered conversation, "
                    "so the assistant's turn cannot be cut out of it; use example_format.name='prompt'")
  return head, whole[len(head):]


# ---------------------------------------------------------------------------------------------
# The run's format: chosen in gin, recorded beside the vocabulary.


@gin.configurable
def example_format(name: Optional[str] = None) -> str:
  """The example format of this run: gin's binding, else the open run_text's (the format a checkpoint
  recorded, for an eval that follows it), else 'prompt'."""
  name = name if name is not None else (run.current().example_format or DEFAULT)
  if name not in FORMATS:
    raise UserError(f"example_format.name={name!r} is not a format; choose one of {', '.join(FORMATS)}")
  return name


def is_configured() -> bool:
  try:
    return gin.query_parameter("example_format.name") is not None
  except ValueError:
    return False


def describe(name: str, vocab: seqio.Vocabulary) -> dict:
  """The JSON-able record of a run's format (the chat template in full for `chat`)."""
  record = {"format": name}
  if name == "chat":
    record["chat_template"] = chat_template_of(vocab)
  return record


def check_same(recorded: dict, current: dict, where: str) -> None:
  if recorded != current:
    detail = ("the chat template differs" if recorded.get("format") == current.get("format")
              else f"this run asks for '{current.get('format')}'")
    raise UserError(f"{where} was made with the example format '{recorded.get('format')}' but {detail}; "
                    f"bind example_format.name='{recorded.get('format')}' (or leave it unset to follow the run)")


def chat_template_of(vocab: seqio.Vocabulary) -> str:
  template = getattr(vocab, "chat_template", None)
  if not template:
    raise UserError(f"example_format.name='chat' needs a chat template, and the tokenizer {vocab} has none "
                    "(tokenizer_config.json 'chat_template' or GGUF 'tokenizer.chat_template'); use 'prompt'")
  return template


def special_tokens(vocab: seqio.Vocabulary) -> dict:
  """bos_token / eos_token as text, the names a chat template reads."""
  text = getattr(vocab, "token_text", None)
  out = {}
  for name in ("bos", "eos"):
    token_id = getattr(vocab, f"{name}_id", None)
    out[f"{name}_token"] = text(token_id) if text is not None and token_id is not None else None
  return out


# ---------------------------------------------------------------------------------------------
# Where the decoder's stream starts.


def decoder_start(vocab: seqio.Vocabulary, name: str) -> Optional[int]:
  """The token every decoder input starts with, or None: the prompt's own first token.

  The byte vocabulary starts at 0 and the `t5` format at the vocabulary's BOS (as before); in the
  `prompt` format a tokenizer that adds BOS starts at BOS and one that does not starts at the first
  token of the text (a chat template writes its own BOS).
  """
  if isinstance(vocab, seqio.ByteVocabulary):
    return 0
  bos = getattr(vocab, "bos_id", None)
  if name == "t5":
    return bos if bos is not None and bos >= 0 else 0
  if name == "prompt" and getattr(vocab, "add_bos", False) and bos is not None:
    return bos
  return None


def empty_prompt_start(vocab: seqio.Vocabulary) -> int:
  """What a stream that starts at its prompt starts with when the prompt is empty (lm-eval's choice)."""
  for name in ("bos_id", "eos_id"):
    token_id = getattr(vocab, name, None)
    if token_id is not None and token_id >= 0:
      return int(token_id)
  return 0


# ---------------------------------------------------------------------------------------------
# Tokenizing: the seqio preprocessor every instruction task ends with.


def _encoder(vocab: seqio.Vocabulary):
  batch = getattr(vocab, "encode_batch", None)
  return batch or (lambda texts: [list(vocab.encode(t)) for t in texts])


def split_ids(encode_batch, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-evaluation-harness's tokens of a context and its continuation: the context's trailing
  whitespace moves to the continuation, the whole text is tokenized, and the continuation is what
  follows the context's own tokens, so the boundary never changes how the text is merged."""
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole, head = encode_batch([context + continuation, context])
  return list(head), list(whole[len(head):])


def _texts(ex, name: str, role: str, vocab) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(context, continuation, delimiter) text of an example under the format."""
  inputs, targets = ex["inputs"], ex["targets"]
  if name == "chat":
    template, specials = chat_template_of(vocab), special_tokens(vocab)

    def turns(prompt, target):
      head, turn = chat_turns(template, prompt.decode("utf-8"), target.decode("utf-8"), specials)
      return head.encode("utf-8"), turn.encode("utf-8")

    head, turn = tf.numpy_function(turns, [inputs, targets], [tf.string, tf.string], stateful=False)
    head.set_shape([])
    turn.set_shape([])
    # The assistant's whole turn (end-of-turn included) is trained on; an option is scored bare.
    return head, (turn if role == "train" else targets), tf.constant("")
  delimiter = ex[DELIMITER] if DELIMITER in ex else tf_delimiter(inputs, None)
  return inputs, tf.strings.join([delimiter, targets]), delimiter


def tokenize(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
             sequence_length: Optional[Mapping[str, int]] = None, *, role: str = "train") -> tf.data.Dataset:
  """Text `inputs`/`targets` -> token ids under the run's format (a seqio preprocessor).

  role "train": the continuation plus EOS (the chat format: the assistant turn, which ends itself);
  "score": the continuation alone (rank classification); "generate": the prompt as it is (the
  decode starts there). Keeps `inputs_pretokenized`, `targets_pretokenized` and the delimiter. A
  prompt or target longer than its length loses its end, as seqio trims (an instruction's passage
  comes first); a training target keeps its EOS.
  """
  if role not in ROLES:
    raise ValueError(f"role {role!r} is not one of {ROLES}")
  name = example_format()
  if name == "t5":
    ds = seqio.preprocessors.tokenize(ds, output_features)
    return seqio.preprocessors.append_eos_after_trim(ds, output_features, sequence_length)
  vocab = output_features["targets"].vocabulary
  vocab = vocab.resolve() if hasattr(vocab, "resolve") else vocab
  if name == "chat":
    chat_template_of(vocab)  # one line, before any data is read, when there is none
  encode = _encoder(vocab)
  eos = vocab.eos_id
  lengths = dict(sequence_length or {})

  def ids(context, continuation):
    context, continuation = context.decode("utf-8"), continuation.decode("utf-8")
    if role == "generate":
      head, tail = encode([context, continuation])
    else:
      head, tail = split_ids(encode, context, continuation)
    head, tail = list(head), list(tail)
    if lengths.get("inputs"):
      head = head[:lengths["inputs"]]
    if role == "train" and name != "chat":
      tail = tail[:lengths["targets"] - 1] if lengths.get("targets") else tail
      tail.append(eos)
    elif lengths.get("targets"):
      tail = tail[:lengths["targets"]]
    return np.asarray(head, np.int32), np.asarray(tail, np.int32)

  def convert(ex):
    context, continuation, delimiter = _texts(ex, name, role, vocab)
    head, tail = tf.numpy_function(ids, [context, continuation], [tf.int32, tf.int32], stateful=False)
    head.set_shape([None])
    tail.set_shape([None])
    out = dict(ex)
    out.update(inputs=head, targets=tail, inputs_pretokenized=ex["inputs"],
               targets_pretokenized=ex["targets"], **{DELIMITER: delimiter})
    return out

  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def preprocessor(role: str):
  """`tokenize` for one role, as a seqio preprocessor."""
  def fn(ds, output_features, sequence_length=None):
    return tokenize(ds, output_features, sequence_length, role=role)
  fn.__name__ = f"tokenize_{role}"
  return fn


# ---------------------------------------------------------------------------------------------
# Stopping a decode.


_stop_strings: dict[str, tuple[str, ...]] = {}


def set_stop_strings(task_name: str, stop: Sequence[str]) -> None:
  """The strings at which a decoded answer of `task_name` is cut (the first one found ends it)."""
  if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
    raise UserError(f"task {task_name}: stop strings must be a list of non-empty strings, not {stop!r}")
  _stop_strings[task_name] = tuple(stop)


def cut_at_stop(task_name: str, text: str) -> str:
  cut = len(text)
  for stop in _stop_strings.get(task_name, ()):
    found = text.find(stop)
    if found >= 0:
      cut = min(cut, found)
  return text[:cut]


def stop_ids(vocab: seqio.Vocabulary, name: str) -> tuple[int, ...]:
  """The tokens that end a decode: EOS, the other end tokens the model lists, and under `chat` the
  token that ends the assistant's turn in its template."""
  ids = [vocab.eos_id] + list(getattr(vocab, "stop_ids", ()) or ())
  if name == "chat":
    head, turn = chat_turns(chat_template_of(vocab), "x", "y", special_tokens(vocab))
    del head
    special = set(getattr(vocab, "special_ids", ()) or ())
    after = _encoder(vocab)([turn[turn.find("y") + 1:]])[0] if "y" in turn else []
    ids += [t for t in after if t in special][:1]
  return tuple(dict.fromkeys(int(i) for i in ids if i is not None and i >= 0))
