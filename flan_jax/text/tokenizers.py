"""Tokenizers as seqio vocabularies: a Hugging Face tokenizer.json or a SentencePiece .model, built from what
records.py reads of a model directory (from_directory) or of the record kept beside a checkpoint (load, build).

The record itself (describe, save, check_same), a model directory's special ids and BOS rule, and what the two
classes here share are records.py's, which needs neither seqio nor TensorFlow; they are named here too, as callers
always found them. Which vocabulary a run uses is vocabulary.py's.
"""

import itertools
import os
from typing import Callable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.errors import UserError
from flan_jax.text import records
from flan_jax.text.records import (  # noqa: F401  (named here too, as callers always found them)
    BOS_TOKENS,
    CHAT_TEMPLATE,
    CONFIGS,
    EOS_TOKENS,
    FILES,
    IDENTITY,
    RECORD,
    TOKENIZER_CONFIG,
    VocabularySpec,
    check_same,
    concrete,
    describe,
    file_sha256,
    save,
)

BYTE_BASE_SIZE = 259  # seqio.ByteVocabulary: PAD, EOS, UNK and the 256 bytes


def _strip_padding(ids: Sequence[int]) -> list[int]:
  """The ids without trailing pads (id 0 may be a real token mid-text, e.g. '!' in Llama 3)."""
  ids = [int(i) for i in ids]
  while ids and ids[-1] == seqio.vocabularies.PAD_ID:
    ids.pop()
  return ids


def _pack(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.array([len(r) for r in rows], np.int64)
  values = np.fromiter(itertools.chain.from_iterable(rows), np.int32, count=int(lengths.sum()))
  return values, lengths


def encode_tf_with(encode_batch: Callable[[list[str]], list[list[int]]], s: tf.Tensor):
  """Tokenizes a string tensor in TF with a Python batch encoder.

  A scalar gives a 1-D int32 tensor; a tensor of rank r >= 1 gives an int32 RaggedTensor of rank
  r + 1 (the last dimension ragged), as seqio's SentencePieceVocabulary does.
  """
  s = tf.convert_to_tensor(s, tf.string)
  rank = s.shape.rank
  if rank is None:
    raise ValueError("encode_tf needs a string tensor of known rank")

  def run(flat):
    return _pack(encode_batch([x.decode("utf-8", errors="replace") for x in flat]))

  values, lengths = tf.numpy_function(run, [tf.reshape(s, [-1])], [tf.int32, tf.int64], stateful=False)
  values.set_shape([None])
  if rank == 0:
    return values
  lengths.set_shape([None])
  ids = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
  shape = tf.shape(s, out_type=tf.int64)
  for axis in range(rank - 1, 0, -1):
    ids = tf.RaggedTensor.from_uniform_row_length(
        ids, shape[axis], nrows=tf.reduce_prod(shape[:axis]), validate=False)
  return ids


def decode_tf_with(decode: Callable[[list[int]], str], ids) -> tf.Tensor:
  """Detokenizes an int tensor of rank >= 1 (its last axis is the sequence) with a Python decoder."""
  if isinstance(ids, tf.RaggedTensor):
    ids = ids.to_tensor()  # the padding this adds is stripped by `decode`
  ids = tf.convert_to_tensor(ids)

  def run(x):
    rows = x.reshape(int(np.prod(x.shape[:-1])), x.shape[-1])
    texts = [decode(row.tolist()).encode("utf-8") for row in rows]
    return np.array(texts, dtype=object).reshape(x.shape[:-1])

  text = tf.numpy_function(run, [ids], tf.string, stateful=False)
  text.set_shape(ids.shape[:-1])
  return text


class HuggingFaceVocabulary(records.HuggingFaceTokenizer, seqio.Vocabulary):
  """A Hugging Face `tokenizers` tokenizer.json as a seqio vocabulary (no extra ids, pad id 0): a
  records.HuggingFaceTokenizer, whose special ids, BOS rule and chat template it keeps.

  `encode` gives the tokenizer's ids without its special tokens (seqio adds EOS); `decode` drops
  trailing pads, BOS, EOS and the tokenizer's special tokens.
  """

  def __init__(self, tokenizer_file: str, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
               add_bos: Optional[bool] = None, chat_template: Optional[str] = None, stop_ids: Sequence[int] = ()):
    seqio.Vocabulary.__init__(self, extra_ids=0)
    records.HuggingFaceTokenizer.__init__(self, tokenizer_file, bos_id, eos_id, add_bos=add_bos,
                                          chat_template=chat_template, stop_ids=stop_ids)

  def _encode(self, s: str) -> Sequence[int]:
    if isinstance(s, bytes):
      s = s.decode("utf-8")
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Sequence[int]) -> str:
    drop = {self._bos_id, self._eos_id}
    keep = [i for i in _strip_padding(ids) if i not in drop and 0 <= i < self._size]
    return self.tokenizer.decode(keep, skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return encode_tf_with(self.encode_batch, s)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return decode_tf_with(self._decode, ids)


class SentencePieceVocabulary(records.FileTokenizer, seqio.SentencePieceVocabulary):
  """A SentencePiece .model as a seqio vocabulary (seqio's, with no extra ids).

  Its ids are the `sentencepiece` library's `encode` ids, in Python and in TF (tf_text). BOS/EOS
  ids come from the arguments, else the model; decode drops trailing pads, BOS and EOS.
  """

  kind = "sentencepiece"

  def __init__(self, model_file: str, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
               add_bos: Optional[bool] = None, chat_template: Optional[str] = None, stop_ids: Sequence[int] = ()):
    super().__init__(os.path.abspath(model_file), extra_ids=0)
    self.sha256 = file_sha256(model_file)
    try:
      tok = self.tokenizer
    except Exception as e:  # sentencepiece raises RuntimeError or a protobuf DecodeError
      raise UserError(f"{model_file} is not a SentencePiece model ({e}); "
                      "point at a model's tokenizer.model") from e
    self._bos_id = bos_id if bos_id is not None else records.present(tok.bos_id())
    self._eos_id = eos_id if eos_id is not None else records.present(tok.eos_id())
    self._unk_id = records.present(tok.unk_id())
    self._set_extras(add_bos, chat_template, stop_ids)

  def _adds_bos(self) -> bool:
    return True  # Llama's SentencePiece tokenizers add BOS unless tokenizer_config.json says otherwise

  def token_text(self, token_id: int) -> Optional[str]:
    return self.tokenizer.id_to_piece(token_id)

  @property
  def special_ids(self) -> set:
    return {i for i in range(self._base_vocab_size) if self.tokenizer.is_control(i)}

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in self.tokenizer.encode(texts)]

  @property
  def tokenizer_file(self) -> str:
    return self.sentencepiece_model_file

  def _decode(self, ids: Sequence[int]) -> str:
    drop = {self._bos_id, self._eos_id}
    size = self._base_vocab_size
    return self.tokenizer.decode([i for i in _strip_padding(ids) if i not in drop and 0 <= i < size])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    return decode_tf_with(self._decode, ids)


CLASSES = {"huggingface": HuggingFaceVocabulary, "sentencepiece": SentencePieceVocabulary}


def build(spec: VocabularySpec) -> seqio.Vocabulary:
  """The seqio vocabulary of a VocabularySpec (records.of_directory's or records.read's)."""
  if spec.kind == "byte":
    return seqio.ByteVocabulary(extra_ids=max(0, spec.record["vocab_size"] - BYTE_BASE_SIZE))
  return CLASSES[spec.kind](spec.file, spec.bos_id, spec.eos_id, add_bos=spec.add_bos,
                            chat_template=spec.chat_template, stop_ids=spec.stop_ids)


def from_directory(path: str) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face model directory, or of one written by `save` (records.of_directory)."""
  return build(records.of_directory(path))


def load(directory: str) -> Optional[seqio.Vocabulary]:
  """The vocabulary recorded by `save` in `directory`, or None when it has no vocabulary.json."""
  spec = records.read(directory)
  return None if spec is None else build(spec)


def bos_id_or_zero(vocab: seqio.Vocabulary) -> int:
  """The vocabulary's BOS id (the decoder's start token), or 0 when it has none."""
  return records.optional_id(vocab, "bos_id") or 0
