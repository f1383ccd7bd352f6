"""The run's vocabulary: the one every flan_jax task tokenizes with, read when a dataset is built or a
decode is made, never at import.

`run_vocabulary()` gives, in this order: gin's `run_vocabulary.vocabulary` (e.g. `@pretrained_vocabulary()`
with `pretrained_vocabulary.path` naming a Hugging Face model directory or a .gguf file), else the
vocabulary of the open `run_text(...)` (flan_jax.text.run: the trainer's run, or the checkpoint an eval
follows), else seqio's byte vocabulary (which `@byte_vocabulary()` binds explicitly). Tasks are registered
at import, before gin is parsed, so their features hold a `RunVocabulary`, which asks `run_vocabulary()` at
every call.
"""

import atexit
import functools
import os
import shutil
import tempfile
from typing import Optional

import gin
import seqio

from flan_jax import storage
from flan_jax.errors import UserError
from flan_jax.text import gguf_tokenizer, run, tokenizers

_BYTES = seqio.ByteVocabulary()


@gin.configurable
def run_vocabulary(vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Vocabulary:
  """The vocabulary of this run: gin's binding, else the open run_text's, else seqio's bytes."""
  if vocabulary is not None:
    return vocabulary
  chosen = run.current().vocabulary
  return chosen if chosen is not None else _BYTES


def is_configured() -> bool:
  """Whether gin binds run_vocabulary.vocabulary (to something other than None)."""
  try:
    return gin.query_parameter("run_vocabulary.vocabulary") is not None
  except ValueError:
    return False


def is_chosen() -> bool:
  """Whether the run's vocabulary is chosen, in gin or by an open run_text, rather than seqio's bytes by default."""
  return is_configured() or run.current().vocabulary is not None


@gin.configurable
def byte_vocabulary() -> seqio.Vocabulary:
  """seqio's byte vocabulary, bound explicitly (`run_vocabulary.vocabulary = @byte_vocabulary()`): for weights
  trained with it whose directory has no tokenizer, such as a Hugging Face export of a run trained from scratch."""
  return _BYTES


# What a bucket's model directory gives the staged copy its tokenizer is read from: the files at its top that
# describe the tokenizer, never the weights.
_TOKENIZER_FILES = (".json", ".model", ".jinja", ".txt")


@gin.configurable
def pretrained_vocabulary(path: str) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face model directory or a .gguf file, loaded once per path (in a bucket: once
  per version of its files, read from their local copy in the staging cache, storage.staged)."""
  if storage.is_remote(path):
    return _from_bucket(storage.absolute(storage.check(path, "pretrained_vocabulary.path")))
  return _pretrained(os.path.abspath(os.path.expanduser(path)))


def _from_bucket(path: str) -> seqio.Vocabulary:
  if path.endswith(".gguf"):
    if not storage.isfile(path):
      raise UserError(f"pretrained_vocabulary.path={path} does not exist; point it at a .gguf file")
    local = storage.staged(path)
  elif storage.isdir(path):
    local = storage.staged(path, include=lambda name: "/" not in name and name.endswith(_TOKENIZER_FILES))
  else:
    raise UserError(f"pretrained_vocabulary.path={path} is not a directory; point it at a Hugging Face "
                    "model directory or a .gguf file")
  try:
    return _pretrained(local)
  except UserError as e:  # named by the path the user gave, not by its staged copy
    raise UserError(str(e).replace(local, path)) from e


@functools.lru_cache(maxsize=None)
def _pretrained(path: str) -> seqio.Vocabulary:
  if path.endswith(".gguf"):
    if not os.path.isfile(path):
      raise UserError(f"pretrained_vocabulary.path={path} does not exist; point it at a .gguf file")
    reader = gguf_tokenizer.open_reader(path)
    directory = tempfile.mkdtemp(prefix="flan_jax_gguf_vocab_")
    atexit.register(shutil.rmtree, directory, True)
    gguf_tokenizer.write_tokenizer_files(reader, path, directory)
    return tokenizers.from_directory(directory)
  if not os.path.isdir(path):
    raise UserError(f"pretrained_vocabulary.path={path} is not a directory; point it at a Hugging Face "
                    "model directory or a .gguf file")
  return tokenizers.from_directory(path)


def _forwarded_property(name: str) -> property:
  return property(lambda self: getattr(self.resolve(), name), doc=f"The run's vocabulary's `{name}`.")


def _forwarded_method(name: str):
  def forward(self, *args, **kwargs):
    return getattr(self.resolve(), name)(*args, **kwargs)
  forward.__name__ = forward.__qualname__ = name
  return forward


class RunVocabulary(seqio.Vocabulary):
  """The vocabulary every task's features use: each call goes to run_vocabulary() at call time.

  Tasks are registered at import, before gin is parsed; this defers the choice to when a dataset is
  built or a decode is made. seqio.Vocabulary's whole interface (its abstract members included) and
  any other public attribute (tokenizer, add_bos, chat_template, ...) are the resolved vocabulary's.
  All instances are equal.
  """

  def __init__(self):
    super().__init__(extra_ids=0)

  def resolve(self) -> seqio.Vocabulary:
    return run_vocabulary()

  bos_id, eos_id, unk_id, pad_id = map(_forwarded_property, ("bos_id", "eos_id", "unk_id", "pad_id"))
  extra_ids, vocab_size, _base_vocab_size = map(_forwarded_property, ("extra_ids", "vocab_size", "_base_vocab_size"))
  encode, decode, encode_tf, decode_tf = map(_forwarded_method, ("encode", "decode", "encode_tf", "decode_tf"))
  _encode, _decode, _encode_tf, _decode_tf = map(_forwarded_method, ("_encode", "_decode", "_encode_tf", "_decode_tf"))

  def __getattr__(self, name):
    if name.startswith("_"):
      raise AttributeError(name)
    return getattr(self.resolve(), name)

  def __eq__(self, other):
    return isinstance(other, RunVocabulary)

  def __hash__(self):
    return hash(RunVocabulary)

  def __str__(self) -> str:
    return "RunVocabulary()"

  __repr__ = __str__
