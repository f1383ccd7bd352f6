"""Tokenizer files and the vocabulary record, without seqio or TensorFlow.

- What a Hugging Face model directory says of its tokenizer: its BOS/EOS ids (config_ids), whether it adds BOS and
  its chat template (tokenizer_config), and all of it with the tokenizer file (of_directory, a VocabularySpec).
- FileTokenizer: what the file-backed vocabularies share (special ids, the BOS rule, the chat template, the other
  ids that end a decode, equality by the file's hash); HuggingFaceTokenizer: a tokenizer.json with them.
- The record kept beside a checkpoint or in an export, as a plain dict and the files beside it: describe (what
  vocabulary.json holds), save, read (a VocabularySpec holding the record), check_same.
- FORMATS: the example formats' names, which format.json holds (formats.py is the formats themselves).

tokenizers.py builds seqio vocabularies of what this module reads, and its HuggingFaceVocabulary is a
HuggingFaceTokenizer. What only reads or writes records (checkpoints.run_record, the lm-evaluation-harness
backend) imports this module alone, so it loads without seqio and TensorFlow.
"""

import dataclasses
import hashlib
import json
import sys
from typing import Callable, Optional, Sequence

from flan_jax import storage
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
FORMATS = ("prompt", "chat", "t5")  # the example formats (formats.py), as format.json names them
DEFAULT_FORMAT = "prompt"


def file_sha256(path: str) -> str:
  try:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()
  except OSError as e:
    raise UserError(f"cannot read tokenizer file {path} ({e.strerror}); check the path") from e


# ---------------------------------------------------------------------------------------------
# A Hugging Face model directory.


def config_ids(directory: str, key: str) -> list[int]:
  """Every id listed under `key` in config.json and generation_config.json (each at its top and in its
  text_config), in that order. `directory` may be in a bucket.

  Chat models often list several EOS ids (e.g. end-of-text and end-of-turn); the first listed is the one that
  ends training targets, and all of them end a decode.
  """
  out = []
  for name in CONFIGS:
    path = storage.join(directory, name)
    if not storage.isfile(path):
      continue
    config = storage.read_json(path)
    for section in (config, config.get("text_config") or {}):
      value = section.get(key)
      for token_id in value if isinstance(value, list) else [value]:
        if token_id is not None and int(token_id) not in out:
          out.append(int(token_id))
  return out


def config_id(directory: str, key: str) -> Optional[int]:
  """The first id `config_ids` lists under `key`, or None."""
  ids = config_ids(directory, key)
  return ids[0] if ids else None


def tokenizer_config(directory: str) -> tuple[Optional[bool], Optional[str]]:
  """(add_bos_token, chat_template) as a Hugging Face model directory gives them (None: not given).

  The template is chat_template.jinja, else tokenizer_config.json's `chat_template` (a string, or
  a list of named templates of which 'default' is used), else chat_template.json.
  """
  config = {}
  path = storage.join(directory, TOKENIZER_CONFIG)
  if storage.isfile(path):
    config = storage.read_json(path)
  template = config.get("chat_template")
  if isinstance(template, list):
    template = next((t.get("template") for t in template if t.get("name") == "default"), None)
  jinja = storage.join(directory, CHAT_TEMPLATE)
  if storage.isfile(jinja):
    template = storage.read_text(jinja)
  elif template is None and storage.isfile(storage.join(directory, "chat_template.json")):
    template = storage.read_json(storage.join(directory, "chat_template.json")).get("chat_template")
  add_bos = config.get("add_bos_token")
  return (None if add_bos is None else bool(add_bos)), template


@dataclasses.dataclass(frozen=True)
class VocabularySpec:
  """What a vocabulary is built from: its kind and, for a tokenizer file, the file and what goes with it.

  `of_directory` reads one from a model directory and `read` from a record; tokenizers.build makes it a seqio
  vocabulary, and a "huggingface" one opens as a HuggingFaceTokenizer without seqio.
  """
  kind: str  # "byte", "huggingface" or "sentencepiece"
  file: Optional[str] = None  # the tokenizer file (none for bytes)
  bos_id: Optional[int] = None  # None: the tokenizer's own
  eos_id: Optional[int] = None
  add_bos: Optional[bool] = None  # None: the tokenizer decides
  chat_template: Optional[str] = None
  stop_ids: tuple[int, ...] = ()  # the ids other than EOS that end a decode
  record: Optional[dict] = None  # vocabulary.json as read, for a recorded vocabulary


def of_directory(path: str) -> VocabularySpec:
  """The vocabulary of a Hugging Face model directory, or of one written by `save` (read).

  tokenizer.json is preferred to tokenizer.model; BOS/EOS ids come from config.json, then
  generation_config.json, then the tokenizer's own special tokens; whether BOS is added and the
  chat template from tokenizer_config.json (else the tokenizer itself decides BOS).
  """
  recorded = read(path)
  if recorded is not None:
    return recorded
  for kind, name in FILES.items():
    file = storage.join(path, name)
    if storage.isfile(file):
      add_bos, template = tokenizer_config(path)
      eos_ids = config_ids(path, "eos_token_id")
      return VocabularySpec(kind, file, config_id(path, "bos_token_id"), eos_ids[0] if eos_ids else None,
                            add_bos=add_bos, chat_template=template, stop_ids=tuple(eos_ids[1:]))
  raise UserError(f"{path} has no tokenizer.json or tokenizer.model, so its weights would be read with another "
                  "vocabulary than they were trained with: copy the model's tokenizer files into it, or bind that "
                  "vocabulary: --gin.run_vocabulary.vocabulary=@pretrained_vocabulary() "
                  "--gin.pretrained_vocabulary.path=<a directory with its tokenizer> (@byte_vocabulary() for a "
                  "flan_jax export of a run trained with bytes)")


# ---------------------------------------------------------------------------------------------
# The file-backed tokenizers.


class FileTokenizer:
  """What the two file-backed vocabularies share: the BOS, EOS and UNK ids they were built with
  (set in __init__), whether the tokenizer adds BOS itself (`add_bos`), the chat template and the
  other ids that end a generation (`stop_ids`), and equality by tokenizer file hash and special ids."""
  kind: str
  tokenizer_file: str
  sha256: str
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

  def _adds_bos(self) -> bool:
    raise NotImplementedError

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
    return (f"{type(self).__name__}(file={self.tokenizer_file}, size={self._base_vocab_size}, "
            f"bos_id={self._bos_id}, eos_id={self._eos_id}, sha256={self.sha256[:12]})")

  __repr__ = __str__


class HuggingFaceTokenizer(FileTokenizer):
  """A Hugging Face `tokenizers` tokenizer.json with its special ids, BOS rule, chat template and stop ids.

  BOS/EOS ids are the arguments, else the tokenizer's own BOS_TOKENS / EOS_TOKENS; whether BOS is added is
  `add_bos`, else what the tokenizer's post-processor does. tokenizers.HuggingFaceVocabulary is this tokenizer as a
  seqio vocabulary; the lm-evaluation-harness backend reads a run's or a GGUF file's tokenizer with this class.
  """

  kind = "huggingface"

  def __init__(self, tokenizer_file: str, bos_id: Optional[int] = None, eos_id: Optional[int] = None,
               add_bos: Optional[bool] = None, chat_template: Optional[str] = None, stop_ids: Sequence[int] = ()):
    self.tokenizer_file = storage.absolute(tokenizer_file)
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
    return bool(ids) and ids[0] == self._bos_id and ids != self.tokenizer.encode("a", add_special_tokens=False).ids

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

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tokenizer"] = None
    return state


def _identity(vocab) -> tuple:
  return vocab.sha256, vocab.bos_id, vocab.eos_id, vocab.add_bos


def present(token_id: Optional[int]) -> Optional[int]:
  """The id, or None where a tokenizer says none (None or a negative id)."""
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


# ---------------------------------------------------------------------------------------------
# The record: vocabulary.json, a copy of the tokenizer file, and its chat template.


def optional_id(vocab, name: str) -> Optional[int]:
  """The vocabulary's `name` (bos_id, eos_id, ...), or None where it has none."""
  try:
    return present(getattr(vocab, name))
  except NotImplementedError:
    return None


def concrete(vocab):
  """`vocab` itself, or the vocabulary it stands for where it is the run's (vocabulary.RunVocabulary)."""
  resolve = getattr(type(vocab), "resolve", None)
  return resolve(vocab) if resolve is not None else vocab


def _is_seqio(vocab, name: str) -> bool:
  """Whether `vocab` is an instance of seqio's class `name`. This module never imports seqio: an object can be
  seqio's only once seqio is loaded, so the class is looked up where seqio already is."""
  seqio = sys.modules.get("seqio")
  return seqio is not None and isinstance(vocab, getattr(seqio, name))


def describe(vocab) -> dict:
  """A JSON-able record of `vocab`: kind, vocab_size, bos_id, eos_id, the tokenizer file's sha256, whether BOS is
  added and the other stop ids. A recorded vocabulary (a VocabularySpec that `read` gives) is the record it holds."""
  if isinstance(vocab, VocabularySpec):
    if vocab.record is None:
      raise ValueError(f"{vocab} was not read from a record; build its vocabulary (tokenizers.build) to describe it")
    return dict(vocab.record)
  vocab = concrete(vocab)
  extras = {"add_bos": bool(getattr(vocab, "add_bos", False)),
            "stop_ids": list(getattr(vocab, "stop_ids", ()) or ())}
  if _is_seqio(vocab, "ByteVocabulary"):
    kind, sha256 = "byte", None
  elif isinstance(vocab, FileTokenizer):
    kind, sha256 = vocab.kind, vocab.sha256
  elif _is_seqio(vocab, "SentencePieceVocabulary"):
    kind, sha256 = "sentencepiece", file_sha256(vocab.sentencepiece_model_file)
  else:
    raise UserError(f"cannot record a {type(vocab).__name__}: use a byte, Hugging Face or "
                    "SentencePiece vocabulary (see flan_jax.text.tokenizers)")
  return {"kind": kind, "vocab_size": int(vocab.vocab_size), "bos_id": optional_id(vocab, "bos_id"),
          "eos_id": optional_id(vocab, "eos_id"), "sha256": sha256, **extras}


def save(vocab, directory: str) -> None:
  """Writes vocabulary.json (describe()), a copy of the tokenizer file and its chat template (if
  any) into `directory`."""
  vocab = concrete(vocab)
  record = describe(vocab)
  storage.makedirs(directory)
  if record["kind"] in FILES:
    source = getattr(vocab, "tokenizer_file", None) or vocab.sentencepiece_model_file
    target = storage.join(directory, FILES[record["kind"]])
    if not (storage.isfile(target) and file_sha256(target) == record["sha256"]):  # e.g. the file itself
      storage.write_bytes(target, storage.read_bytes(source))  # a copy, never a link to the user's file
  template = getattr(vocab, "chat_template", None)
  if template:
    storage.write_text(storage.join(directory, CHAT_TEMPLATE), template, encoding="utf-8")
  storage.write_json(storage.join(directory, RECORD), record, indent=2)


def read(directory: str) -> Optional[VocabularySpec]:
  """The vocabulary recorded by `save` in `directory`, or None when it has no vocabulary.json; its tokenizer file
  is checked to be the one recorded."""
  path = storage.join(directory, RECORD)
  if not storage.isfile(path):
    return None
  record = storage.read_json(path)
  kind = record.get("kind")
  if kind == "byte":
    return VocabularySpec("byte", record=record)
  if kind not in FILES:
    raise UserError(f"{path} records an unknown vocabulary kind {kind!r}; expected byte, huggingface "
                    "or sentencepiece")
  template = None
  if storage.isfile(storage.join(directory, CHAT_TEMPLATE)):
    template = storage.read_text(storage.join(directory, CHAT_TEMPLATE))
  file = storage.absolute(storage.join(directory, FILES[kind]))
  if file_sha256(file) != record["sha256"]:
    raise UserError(f"{file} is not the tokenizer recorded in {path} (sha256 differs); "
                    "restore the file saved with the checkpoint")
  return VocabularySpec(kind, file, record["bos_id"], record["eos_id"], add_bos=record.get("add_bos"),
                        chat_template=template, stop_ids=tuple(record.get("stop_ids", ())), record=record)


def _summary(record: dict) -> str:
  sha = f", sha256 {record['sha256'][:12]}" if record.get("sha256") else ""
  return (f"{record.get('kind')} (size {record.get('vocab_size')}, bos {record.get('bos_id')}, "
          f"eos {record.get('eos_id')}, adds bos {record.get('add_bos')}{sha})")


def check_same(recorded: dict, current, where: str) -> None:
  """Raises UserError when `current` is not the vocabulary `recorded` by describe()."""
  keys = [k for k in IDENTITY if k in recorded]  # records older than `add_bos` lack it
  now = describe(current)
  if any(now.get(k) != recorded.get(k) for k in keys):
    raise UserError(f"{where} was made with the vocabulary {_summary(recorded)} but this run uses "
                    f"{_summary(now)}; bind run_vocabulary.vocabulary to the matching vocabulary")
