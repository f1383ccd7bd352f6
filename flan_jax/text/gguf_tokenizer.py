"""The tokenizer inside a llama.cpp GGUF file, written out as Hugging Face tokenizer files.

A byte-level BPE vocabulary (`tokenizer.ggml.model = gpt2`) becomes a `tokenizer.json` equal to the
original; a SentencePiece one (`llama`) a `tokenizer.model`. A `tokenizer_config.json` (special tokens,
whether BOS is added, the chat template) and a `config.json` (the BOS/EOS ids) go beside it, so
`tokenizers.from_directory` reads the directory as it reads a Hugging Face model's. The model's
config and tensors are flan_jax.checkpoints.gguf_reader's; this module reads the tokenizer metadata only.
"""

import json
import os
from typing import Any

import gguf

from flan_jax.errors import UserError

REQUIRED = object()  # Metadata.get's default: the key must be there

# Pre-tokenizer splits that llama.cpp names in `tokenizer.ggml.pre`, as the original Hugging Face
# tokenizers define them. `None` means ByteLevel's own GPT-2 split.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "gpt-2": "gpt2", "phi-2": "gpt2",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3",
    "qwen2": "qwen2",
    "smollm": "digits", "starcoder": "digits",
}


class Metadata:
  """Typed access to a GGUF file's key/value metadata."""

  def __init__(self, reader: gguf.GGUFReader, path: str):
    self._reader, self._path = reader, path

  def get(self, key: str, default: Any = REQUIRED) -> Any:
    field = self._reader.get_field(key)
    if field is None:
      if default is REQUIRED:
        raise UserError(f"{self._path} has no metadata key {key!r}; re-export it with a current "
                        "llama.cpp convert_hf_to_gguf.py")
      return default
    return field.contents()


def open_reader(path: str) -> gguf.GGUFReader:
  """The gguf package's reader of the file at `path`; a missing or unreadable file is a one-line UserError."""
  if not os.path.isfile(path):
    raise UserError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, KeyError, IndexError... on bad bytes
    reason = " ".join(str(e).split()) or type(e).__name__
    raise UserError(f"{path} is not a readable GGUF file ({reason}); pass a llama.cpp .gguf "
                    "model file") from None


def write_tokenizer_files(reader: gguf.GGUFReader, path: str, directory: str) -> str:
  """Writes the tokenizer of the GGUF file `path` (read by `reader`) into `directory`; returns the
  tokenizer file written (tokenizer.json or tokenizer.model).

  Beside it: tokenizer_config.json, and a config.json holding only the file's BOS and EOS ids (a
  caller that has the model's whole config writes it over this one).
  """
  meta = Metadata(reader, path)
  kind = meta.get("tokenizer.ggml.model", None)
  embedded = meta.get("tokenizer.huggingface.json", None)  # the original tokenizer.json, if kept
  if embedded is None and kind not in ("gpt2", "llama"):
    raise UserError(f"{path}: tokenizer model {kind!r} is not supported; only 'gpt2' (byte-level "
                    "BPE) and 'llama' (SentencePiece) vocabularies can be converted")
  tokens = meta.get("tokenizer.ggml.tokens", [] if embedded is not None else REQUIRED)
  os.makedirs(directory, exist_ok=True)
  if embedded is not None:
    target = os.path.join(directory, "tokenizer.json")
    with open(target, "w", encoding="utf-8") as f:
      f.write(embedded)
  elif kind == "gpt2":
    target = os.path.join(directory, "tokenizer.json")
    bpe_tokenizer(meta, tokens, path).save(target)
  else:
    target = os.path.join(directory, "tokenizer.model")
    with open(target, "wb") as f:
      f.write(sentencepiece_model(meta, tokens).SerializeToString())
  _write_json(os.path.join(directory, "config.json"),
              {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id", None),
               "eos_token_id": meta.get("tokenizer.ggml.eos_token_id", None)})
  _write_json(os.path.join(directory, "tokenizer_config.json"), _tokenizer_config(meta, tokens, target))
  return target


def bpe_tokenizer(meta: Metadata, tokens: list[str], path: str):
  """A `tokenizers.Tokenizer` equal to the original byte-level BPE tokenizer."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  pre = meta.get("tokenizer.ggml.pre", None)
  split = PRE_TOKENIZERS.get(pre)
  if split is None:
    raise UserError(f"{path}: BPE pre-tokenizer {pre!r} is not supported; supported: "
                    f"{', '.join(sorted(PRE_TOKENIZERS))}")
  vocab = {}
  for i, token in enumerate(tokens):
    vocab.setdefault(token, i)
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges")]
  unk = _token_id(meta, "unknown", tokens)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None if unk is None else tokens[unk],
                             ignore_merges=split == "llama3"))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits"))
  if split in ("llama3", "qwen2"):
    regex = Regex(LLAMA3_SPLIT if split == "llama3" else QWEN2_SPLIT)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(regex, "isolated"), byte_level])
  elif split == "digits":
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  else:
    tok.pre_tokenizer = byte_level
  if split == "qwen2":
    tok.normalizer = normalizers.NFC()
  tok.decoder = decoders.ByteLevel()
  types = _token_types(meta, tokens)
  tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i, t in enumerate(types) if t == gguf.TokenType.CONTROL])
  tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                  for i, t in enumerate(types) if t == gguf.TokenType.USER_DEFINED])
  post = _post_processor(meta, tokens, add_bos_default=split == "llama3")
  if post is not None:
    tok.post_processor = post
  return tok


def _post_processor(meta: Metadata, tokens: list[str], add_bos_default: bool):
  """Adds BOS/EOS around each sequence as the file asks (llama.cpp's default when it is silent)."""
  from tokenizers import processors
  bos, eos = _token_id(meta, "bos", tokens), _token_id(meta, "eos", tokens)
  if not meta.get("tokenizer.ggml.add_bos_token", add_bos_default):
    bos = None
  if not meta.get("tokenizer.ggml.add_eos_token", False):
    eos = None
  if bos is None and eos is None:
    return None
  single = ([tokens[bos]] if bos is not None else []) + ["$A"] + ([tokens[eos]] if eos is not None else [])
  pair = single + ["$B:1" if t == "$A" else f"{t}:1" for t in single]
  special = [(tokens[i], i) for i in {bos, eos} if i is not None]
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def sentencepiece_model(meta: Metadata, tokens: list[str]):
  """A SentencePiece BPE ModelProto with Llama's normalization and byte fallback."""
  from sentencepiece import sentencepiece_model_pb2 as pb
  scores = meta.get("tokenizer.ggml.scores", None) or [0.0] * len(tokens)
  types = _token_types(meta, tokens)
  model = pb.ModelProto()
  for token, score, kind in zip(tokens, scores, types):
    model.pieces.add(piece=token, score=score, type=kind)
  spec = model.trainer_spec
  spec.model_type = pb.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  pieces = set(tokens)
  spec.byte_fallback = all(f"<0x{b:02X}>" in pieces for b in range(256))
  unknown = [i for i, t in enumerate(types) if t == gguf.TokenType.UNKNOWN]
  ids = {"unk": unknown[0] if unknown else None, "bos": _token_id(meta, "bos", tokens),
         "eos": _token_id(meta, "eos", tokens), "pad": _token_id(meta, "padding", tokens)}
  for name, index in ids.items():
    setattr(spec, f"{name}_id", -1 if index is None else index)
    if index is not None:
      setattr(spec, f"{name}_piece", tokens[index])
  norm = model.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  norm.remove_extra_whitespaces = bool(meta.get("tokenizer.ggml.remove_extra_whitespaces", False))
  norm.escape_whitespaces = True
  return model


def _token_types(meta: Metadata, tokens: list[str]) -> list[int]:
  """llama.cpp's token types (SentencePiece's piece types); anything unrecognised counts as normal."""
  types = meta.get("tokenizer.ggml.token_type", None) or [gguf.TokenType.NORMAL] * len(tokens)
  known = {int(t) for t in gguf.TokenType}
  return [t if t in known else int(gguf.TokenType.NORMAL) for t in types]


def _token_id(meta: Metadata, name: str, tokens: list[str]) -> int | None:
  """The id under `tokenizer.ggml.<name>_token_id`, when the file has one that names a token."""
  index = meta.get(f"tokenizer.ggml.{name}_token_id", None)
  return index if index is not None and 0 <= index < len(tokens) else None


def _tokenizer_config(meta: Metadata, tokens: list[str], target: str) -> dict:
  """tokenizer_config.json: the tokenizer class, its special tokens, (SentencePiece) BOS/EOS use and
  the chat template. (A byte-level BPE tokenizer.json adds BOS itself where the file says so.)"""
  spm = target.endswith(".model")
  config = {"tokenizer_class": "LlamaTokenizer" if spm else "PreTrainedTokenizerFast"}
  for field, name in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("pad_token", "padding")):
    index = _token_id(meta, name, tokens)
    if index is not None:
      config[field] = tokens[index]
  if spm:
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", True))
    config["add_eos_token"] = bool(meta.get("tokenizer.ggml.add_eos_token", False))
  template = meta.get("tokenizer.chat_template", None)
  if template:
    config["chat_template"] = template
  return config


def _write_json(path: str, value: dict):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)
