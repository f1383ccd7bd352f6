"""Tokenizers as seqio vocabularies: a Hugging Face tokenizer.json or a SentencePiece .model read from a
model directory (its BOS/EOS ids, whether it adds BOS, its chat template), and the record of one kept
beside a checkpoint (describe, save, load, check_same).

Which vocabulary a run uses is vocabulary.py's; this module only builds, describes and compares them.
It is one job at about 470 lines: reading a tokenizer directory needs the record's loader, and the record
(describe, check_same) needs both classes' special ids, so splitting it would make two halves that import
each other.
"""

import hashlib
import itertools
import json
import os
import shutil
from typing import Callable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.errors import UserError

RECORD = "vocabulary.json"  # what save() writes beside a checkpoint
CHAT_TEMPLATE = "chat_template.jinja"  # the tokenizer's chat template, where it has one
TOKENIZER_CONFIG = "tokenizer_config.json"
IDENTITY = ("kind", "vocab_size", "bos_id", "eos_id", "sha256", "add_bos")  # what must match on resume
FILES = {"huggingface": "tokenizer.json", "sentencepiece": "tokenizer.model"}
CONFIGS = ("config.json", "generation_config.json")  # where a model directory keeps its bos/eos ids
# Token strings taken as BOS / EOS when neither the caller nor a config gives the id.
BOS_TOKENS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|im_start|>")
EOS_TOKENS = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "<|im_end|>")
BYTE_BASE_SIZE = 259  # seqio.ByteVocabulary: PAD, EOS, UNK and the 256 bytes


def file_sha256(path: str) -> str:
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError as e:
    raise UserError(f"cannot read tokenizer file {path} ({e.strerror}); check the path") from e


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


class _SpecialIds:
  """What the two file-backed vocabularies share: the BOS, EOS and UNK ids they were built with
  (set in __init__), whether the tokenizer adds BOS itself (`add_bos`), the chat template and the
  other ids that end a generation (`stop_ids`), and equality by tokenizer file hash and special ids."""
  _bos_id: Optional[int]
  _eos_id: Optional[int]
  _unk_id: Optional[int]
  add_bos: bool
  chat_template: Optional[str]
  stop_ids: tuple

  def _set_extras(self, add_bos: Optional[bool], chat_template: Optional[str], stop_ids: Sequence[int]):
    self.add_bos = bool(self._adds_bos() if add_bos is None else add_bos) and self._bos_id is not None
    self.chat_template = chat_template or None
    self.stop_ids = tuple(int(i) for i in stop_ids)

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos_id

  @property
  def eos_id(self) -> Optional[int]:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  def __eq__(self, other):
    return type(other) is type(self) and _identity(other) == _identity(self)

  def __hash__(self):
    return hash(_identity(self))

  def __str__(self) -> str:
    return (f"{type(self).__name__}(file={self.tokenizer_file}, size={self.vocab_size}, "
            f"bos_id={self._bos_id}, eos_id={self._eos_id}, sha256={self.sha256[:12]})")

  __repr__ = __str__


class HuggingFaceVocabulary(_SpecialIds, seqio.Vocabulary):
  """A Hugging Face `tokenizers` tokenizer.json as a seqio vocabulary (no extra ids, pad id 0).

  `encode` gives the tokenizer's ids without its special tokens (seqio adds EOS); `decode` drops
  trailing pads, BOS, EOS and the tokenizer's special tokens.
  """

  kind = "huggingface"

  def __init__(self, tokenizer_file: str, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
               add_bos: Optional[bool] = None, chat_template: Optional[str] = None, stop_ids: Sequence[int] = ()):
    super().__init__(extra_ids=0)
    self.tokenizer_file = os.path.abspath(tokenizer_file)
    self.sha256 = file_sha256(tokenizer_file)
    self._tokenizer = None
    tok = self.tokenizer
    self._bos_id = bos_id if bos_id is not None else _find_token(tok.token_to_id, BOS_TOKENS)
    self._eos_id = eos_id if eos_id is not None else _find_token(tok.token_to_id, EOS_TOKENS)
    self._unk_id = _hf_unk_id(tok)
    ids = tok.get_vocab(with_added_tokens=True).values()
    self._size = max(tok.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
    self._set_extras(add_bos, chat_template, stop_ids)

  def _adds_bos(self) -> bool:
    """Whether the tokenizer's post-processor puts BOS in front of a text."""
    ids = self.tokenizer.encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == self._bos_id and ids != self._encode("a")

  def token_text(self, token_id: int) -> Optional[str]:
    return self.tokenizer.id_to_token(token_id)

  @property
  def special_ids(self) -> set:
    return {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}

  @property
  def tokenizer(self):
    """The `tokenizers.Tokenizer`, loaded on first use (and again after unpickling)."""
    if self._tokenizer is None:
      import tokenizers  # pylint: disable=g-import-not-at-top
      try:
        tok = tokenizers.Tokenizer.from_file(self.tokenizer_file)
      except Exception as e:  # the Rust side raises a plain Exception
        raise UserError(f"{self.tokenizer_file} is not a Hugging Face tokenizer.json ({e}); "
                        "point at the file a model's tokenizer was saved to") from e
      tok.no_truncation()  # some saved tokenizers truncate or pad; seqio trims and pads itself
      tok.no_padding()
      self._tokenizer = tok
    return self._tokenizer

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

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

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tokenizer"] = None
    return state


class SentencePieceVocabulary(_SpecialIds, seqio.SentencePieceVocabulary):
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
    self._bos_id = bos_id if bos_id is not None else _present(tok.bos_id())
    self._eos_id = eos_id if eos_id is not None else _present(tok.eos_id())
    self._unk_id = _present(tok.unk_id())
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


def _identity(vocab) -> tuple:
  return vocab.sha256, vocab.bos_id, vocab.eos_id, vocab.add_bos


def _present(token_id: int) -> Optional[int]:
  return None if token_id is None or token_id < 0 else token_id


def _find_token(token_to_id: Callable[[str], Optional[int]], names: Sequence[str]) -> Optional[int]:
  for name in names:
    token_id = token_to_id(name)
    if token_id is not None:
      return token_id
  return None


def _hf_unk_id(tok) -> Optional[int]:
  import tokenizers  # pylint: disable=g-import-not-at-top
  token = getattr(tok.model, "unk_token", None)
  if token:
    return tok.token_to_id(token)
  if isinstance(tok.model, tokenizers.models.Unigram):
    return json.loads(tok.to_str())["model"].get("unk_id")
  return None


def _config_id(directory: str, key: str) -> Optional[int]:
  """`key` from config.json (or its text_config), else generation_config.json; a list gives its first.

  Chat models often list several EOS ids (e.g. end-of-text and end-of-turn); the first listed is
  the one that ends training targets, and all of them end a decode (`_config_ids`).
  """
  ids = _config_ids(directory, key)
  return ids[0] if ids else None


def _config_ids(directory: str, key: str) -> list[int]:
  """Every id listed under `key` in config.json and generation_config.json, in that order."""
  out = []
  for name in CONFIGS:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      config = json.load(f)
    for section in (config, config.get("text_config") or {}):
      value = section.get(key)
      for token_id in value if isinstance(value, list) else [value]:
        if token_id is not None and int(token_id) not in out:
          out.append(int(token_id))
  return out


def _tokenizer_config(directory: str) -> tuple[Optional[bool], Optional[str]]:
  """(add_bos_token, chat_template) as a Hugging Face model directory gives them (None: not given).

  The template is chat_template.jinja, else tokenizer_config.json's `chat_template` (a string, or
  a list of named templates of which 'default' is used), else chat_template.json.
  """
  config = {}
  path = os.path.join(directory, TOKENIZER_CONFIG)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  template = config.get("chat_template")
  if isinstance(template, list):
    template = next((t.get("template") for t in template if t.get("name") == "default"), None)
  jinja = os.path.join(directory, CHAT_TEMPLATE)
  if os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      template = f.read()
  elif template is None and os.path.isfile(os.path.join(directory, "chat_template.json")):
    with open(os.path.join(directory, "chat_template.json"), encoding="utf-8") as f:
      template = json.load(f).get("chat_template")
  add_bos = config.get("add_bos_token")
  return (None if add_bos is None else bool(add_bos)), template


def from_directory(path: str) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face model directory, or of one written by `save`.

  tokenizer.json is preferred to tokenizer.model; BOS/EOS ids come from config.json, then
  generation_config.json, then the tokenizer's own special tokens; whether BOS is added and the
  chat template from tokenizer_config.json (else the tokenizer itself decides BOS).
  """
  if os.path.isfile(os.path.join(path, RECORD)):
    return load(path)
  for kind, name in FILES.items():
    file = os.path.join(path, name)
    if os.path.isfile(file):
      add_bos, template = _tokenizer_config(path)
      eos_ids = _config_ids(path, "eos_token_id")
      return CLASSES[kind](file, _config_id(path, "bos_token_id"), eos_ids[0] if eos_ids else None,
                           add_bos=add_bos, chat_template=template, stop_ids=eos_ids[1:])
  raise UserError(f"{path} has no tokenizer.json or tokenizer.model, so its weights would be read with another "
                  "vocabulary than they were trained with: copy the model's tokenizer files into it, or bind that "
                  "vocabulary: --gin.run_vocabulary.vocabulary=@pretrained_vocabulary() "
                  "--gin.pretrained_vocabulary.path=<a directory with its tokenizer> (@byte_vocabulary() for a "
                  "flan_jax export of a run trained with bytes)")


def _optional_id(vocab: seqio.Vocabulary, name: str) -> Optional[int]:
  try:
    return _present(getattr(vocab, name))
  except NotImplementedError:
    return None


def bos_id_or_zero(vocab: seqio.Vocabulary) -> int:
  """The vocabulary's BOS id (the decoder's start token), or 0 when it has none."""
  return _optional_id(vocab, "bos_id") or 0


def concrete(vocab: seqio.Vocabulary) -> seqio.Vocabulary:
  """`vocab` itself, or the vocabulary it stands for where it is the run's (vocabulary.RunVocabulary)."""
  resolve = getattr(type(vocab), "resolve", None)
  return resolve(vocab) if resolve is not None else vocab


def describe(vocab: seqio.Vocabulary) -> dict:
  """A JSON-able record of `vocab`: kind, vocab_size, bos_id, eos_id and the tokenizer file's sha256."""
  vocab = concrete(vocab)
  extras = {"add_bos": bool(getattr(vocab, "add_bos", False)),
            "stop_ids": list(getattr(vocab, "stop_ids", ()) or ())}
  if isinstance(vocab, seqio.ByteVocabulary):
    kind, sha256 = "byte", None
  elif isinstance(vocab, (HuggingFaceVocabulary, SentencePieceVocabulary)):
    kind, sha256 = vocab.kind, vocab.sha256
  elif isinstance(vocab, seqio.SentencePieceVocabulary):
    kind, sha256 = "sentencepiece", file_sha256(vocab.sentencepiece_model_file)
  else:
    raise UserError(f"cannot record a {type(vocab).__name__}: use a byte, Hugging Face or "
                    "SentencePiece vocabulary (see flan_jax.text.tokenizers)")
  return {"kind": kind, "vocab_size": int(vocab.vocab_size), "bos_id": _optional_id(vocab, "bos_id"),
          "eos_id": _optional_id(vocab, "eos_id"), "sha256": sha256, **extras}


def save(vocab: seqio.Vocabulary, directory: str) -> None:
  """Writes vocabulary.json (describe()), a copy of the tokenizer file and its chat template (if
  any) into `directory`."""
  vocab = concrete(vocab)
  record = describe(vocab)
  os.makedirs(directory, exist_ok=True)
  if record["kind"] in FILES:
    source = getattr(vocab, "tokenizer_file", None) or vocab.sentencepiece_model_file
    target = os.path.join(directory, FILES[record["kind"]])
    if not (os.path.exists(target) and os.path.samefile(source, target)):
      shutil.copyfile(source, target + ".tmp")
      os.replace(target + ".tmp", target)
  template = getattr(vocab, "chat_template", None)
  if template:
    _write_text(os.path.join(directory, CHAT_TEMPLATE), template)
  path = os.path.join(directory, RECORD)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


def _write_text(path: str, text: str) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def load(directory: str) -> Optional[seqio.Vocabulary]:
  """The vocabulary recorded by `save` in `directory`, or None when it has no vocabulary.json."""
  path = os.path.join(directory, RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    record = json.load(f)
  kind = record.get("kind")
  if kind == "byte":
    return seqio.ByteVocabulary(extra_ids=max(0, record["vocab_size"] - BYTE_BASE_SIZE))
  if kind not in FILES:
    raise UserError(f"{path} records an unknown vocabulary kind {kind!r}; expected byte, huggingface "
                    "or sentencepiece")
  template = None
  if os.path.isfile(os.path.join(directory, CHAT_TEMPLATE)):
    with open(os.path.join(directory, CHAT_TEMPLATE), encoding="utf-8") as f:
      template = f.read()
  vocab = CLASSES[kind](os.path.join(directory, FILES[kind]), record["bos_id"], record["eos_id"],
                        add_bos=record.get("add_bos"), chat_template=template,
                        stop_ids=record.get("stop_ids", ()))
  if vocab.sha256 != record["sha256"]:
    raise UserError(f"{vocab.tokenizer_file} is not the tokenizer recorded in {path} (sha256 differs); "
                    "restore the file saved with the checkpoint")
  return vocab


def _summary(record: dict) -> str:
  sha = f", sha256 {record['sha256'][:12]}" if record.get("sha256") else ""
  return (f"{record.get('kind')} (size {record.get('vocab_size')}, bos {record.get('bos_id')}, "
          f"eos {record.get('eos_id')}, adds bos {record.get('add_bos')}{sha})")


def check_same(recorded: dict, current: seqio.Vocabulary, where: str) -> None:
  """Raises UserError when `current` is not the vocabulary `recorded` by describe()."""
  keys = [k for k in IDENTITY if k in recorded]  # records older than `add_bos` lack it
  now = describe(current)
  if any(now.get(k) != recorded.get(k) for k in keys):
    raise UserError(f"{where} was made with the vocabulary {_summary(recorded)} but this run uses "
                    f"{_summary(now)}; bind run_vocabulary.vocabulary to the matching vocabulary")

