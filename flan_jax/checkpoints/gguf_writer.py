"""Writes a flan_jax model as one llama.cpp GGUF file (Llama or Qwen2; F32, F16, BF16 or Q8_0).

It takes the parameter arrays, the ModelConfig and the tokenizer metadata (`tokenizer_metadata` of the
run's vocabulary) and never restores: export.py restores, then calls `write`. It is the inverse of
gguf_reader.py: reading the file back gives the same config, tensors and tokenizer.
"""

import json
import os
from typing import Any, Optional, Sequence

import gguf
import jax
import numpy as np

from flan_jax.checkpoints import gguf_reader, hf
from flan_jax.errors import UserError
from flan_jax.model.config import ModelConfig
from flan_jax.text import gguf_tokenizer, records

_Q = gguf.GGMLQuantizationType
_K = gguf.Keys.Tokenizer
# EXPORT_DTYPE -> how the file stores its matrices (vectors are always float32, as llama.cpp keeps them).
TYPES = {"float32": _Q.F32, "float16": _Q.F16, "bfloat16": _Q.BF16, "q8_0": _Q.Q8_0}
_FILE_TYPES = {_Q.F32: gguf.LlamaFileType.ALL_F32, _Q.F16: gguf.LlamaFileType.MOSTLY_F16,
               _Q.BF16: gguf.LlamaFileType.MOSTLY_BF16, _Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0}
_ROPE_FREQS = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"

# Text the converted tokenizer must split exactly as the run's does: digits, contractions in both cases,
# runs of whitespace, punctuation next to letters, scripts, and forms that NFC / NFKC normalization change.
_PROBE = [
    "Hello world! It's a test, isn't it? DON'T WE'LL they'd (brackets) [x] {y} <tag> a+b=c",
    "digits 1 12 123 1234 12345 3.14159 -42 1e-5 0x1F 2024-06-01",
    "  two leading spaces, three trailing   \ttabs\t\there\nnewline\n\n\nCRLF\r\nend\r\n",
    "Café naïve Straße größer — 東京は日本の首都です。 Привет, мир! ¿Qué tal? Ελληνικά עברית العربية",
    "combining e\u0301 vs é, full-width ＡＢＣ１２３, ligature ﬁ, emoji 🙂🚀👩‍💻",
    "def f(x):\n    return x * 2  # indented code\n",
    " ", "\n", "a",
]


def file_name(dtype: str) -> str:
  """The file an export of type `dtype` writes in OUTPUT_DIR: model-f32.gguf, model-q8_0.gguf, ..."""
  return f"model-{TYPES[dtype].name.lower()}.gguf"


def check_config(config: ModelConfig) -> None:
  """A one-line error for a model that llama.cpp's llama/qwen2 architectures cannot run as trained."""
  if config.sliding_window:
    raise UserError(f"GGUF export of a sliding-window model (ModelConfig.sliding_window={config.sliding_window}) "
                    "is not supported: llama.cpp's llama architecture attends to the whole context; export it "
                    "with EXPORT_FORMAT='huggingface'")


# ---------------------------------------------------------------------------------------------
# Tensors and model metadata.


def write(params: Any, config: ModelConfig, tokenizer: dict, path: str, qtype: gguf.GGMLQuantizationType, *,
          name: str = "model") -> None:
  """Writes the parameters, the model metadata and `tokenizer` (from tokenizer_metadata) to `path`.

  Every process takes part in gathering each tensor; only process 0 writes. The tensor directory is
  written first from the shapes alone, then each tensor as it arrives, so one tensor is in host memory at
  a time. The file is written under a temporary name and renamed when complete.
  """
  arch = gguf.MODEL_ARCH.QWEN2 if config.qkv_bias else gguf.MODEL_ARCH.LLAMA
  names = gguf.get_tensor_name_map(arch, config.num_layers)
  plan = []  # (GGUF name, Hugging Face shape, stored type), in the order hf_tensors yields them
  for m, shape in hf.leaves(config):  # the name table's own shapes
    hf_shape = hf.to_hf(m, np.empty(shape[1:] if m.stacked else shape, np.int8)).shape
    for i in m.layers(config):
      hf_name = m.hf_name.format(i=i)
      gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
      if gguf_name is None:
        raise ValueError(f"the gguf package has no {arch.name} name for {hf_name}")
      plan.append((gguf_name, hf_shape, _stored_type(hf_shape, qtype)))
  freqs = _rope_freqs(config)
  is_main = jax.process_index() == 0
  tmp = path + ".tmp"
  writer = None
  try:
    if is_main:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
      _add_model_metadata(writer, config, qtype, name)
      _add_tokenizer(writer, tokenizer)
      for gguf_name, shape, stored in plan:
        writer.add_tensor_info(gguf_name, shape, np.float32, _nbytes(shape, stored), raw_dtype=stored)
      if freqs is not None:
        writer.add_tensor_info(_ROPE_FREQS, freqs.shape, np.float32, freqs.nbytes, raw_dtype=_Q.F32)
      writer.write_header_to_file()
      writer.write_kv_data_to_file()
      writer.write_ti_data_to_file()
    tensors = hf.hf_tensors(params, config, np.float32)
    for (hf_name, value), (_, shape, stored) in zip(tensors, plan, strict=True):
      if is_main:
        writer.write_tensor_data(_encode(_llama_rows(hf_name, value, config), stored))
    if is_main:
      if freqs is not None:
        writer.write_tensor_data(freqs)
      writer.close()
      os.replace(tmp, path)
  except BaseException as e:
    if writer is not None:
      writer.close()
      if os.path.exists(tmp):
        os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # a failed write: name the file
      e.filename = path
    raise


def _stored_type(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
  """Vectors stay float32; a matrix whose rows do not split into Q8_0 blocks falls back to F16, as
  llama.cpp's converter does."""
  if len(shape) < 2:
    return _Q.F32
  if qtype == _Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0]:
    return _Q.F16
  return qtype


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size


def _encode(value: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
  value = np.ascontiguousarray(value, dtype=np.float32)
  if qtype == _Q.F32:
    return value
  if qtype == _Q.F16:
    return value.astype(np.float16)
  return gguf.quants.quantize(value, qtype)  # BF16 and Q8_0 as raw bytes


def _llama_rows(hf_name: str, value: np.ndarray, config: ModelConfig) -> np.ndarray:
  """llama.cpp's llama architecture wants each q/k head's two rotary halves interleaved (Qwen2 does not):
  within a head, row j of the first half goes to row 2j and row j of the second half to row 2j + 1."""
  if config.qkv_bias:
    return value
  if ".self_attn.q_proj." in hf_name:
    heads = config.num_heads
  elif ".self_attn.k_proj." in hf_name:
    heads = config.num_kv_heads
  else:
    return value
  rows = value.shape[0]
  return value.reshape(heads, 2, rows // heads // 2, *value.shape[1:]).swapaxes(1, 2).reshape(value.shape)


def _rope_freqs(config: ModelConfig) -> Optional[np.ndarray]:
  """Llama 3 rotary scaling, which llama.cpp stores as the factor dividing each frequency."""
  if config.rope_scaling != "llama3":
    return None
  scaling = {"factor": config.rope_scaling_factor, "low_freq_factor": config.rope_low_freq_factor,
             "high_freq_factor": config.rope_high_freq_factor,
             "original_max_position_embeddings": config.rope_original_max_position}
  return gguf_reader.llama3_rope_factors(config.rope_theta, config.head_dim, scaling)


def _add_model_metadata(writer: gguf.GGUFWriter, config: ModelConfig, qtype: gguf.GGMLQuantizationType,
                        name: str) -> None:
  writer.add_name(name)
  writer.add_file_type(_FILE_TYPES[qtype])
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
  writer.add_context_length(config.max_position_embeddings)
  writer.add_embedding_length(config.d_model)
  writer.add_block_count(config.num_layers)
  writer.add_feed_forward_length(config.d_ff)
  writer.add_head_count(config.num_heads)
  writer.add_head_count_kv(config.num_kv_heads)
  writer.add_key_length(config.head_dim)
  writer.add_value_length(config.head_dim)
  writer.add_rope_dimension_count(config.head_dim)
  writer.add_rope_freq_base(config.rope_theta)
  writer.add_layer_norm_rms_eps(config.norm_eps)
  writer.add_vocab_size(config.vocab_size)
  if config.rope_scaling == "linear":
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(config.rope_scaling_factor)


# ---------------------------------------------------------------------------------------------
# Tokenizer.


def tokenizer_metadata(vocab, vocab_size: int, stop_ids: Sequence[int] = ()) -> dict:
  """llama.cpp's `tokenizer.*` metadata for a run's vocabulary, checked to tokenize as the vocabulary does.

  A byte-level BPE tokenizer.json becomes a `gpt2` vocabulary with the `tokenizer.ggml.pre` its
  pre-tokenizer matches, a SentencePiece model a `llama` one; rows of the embedding beyond the tokenizer
  become unused `[PAD<id>]` tokens. The first stop id other than EOS (a chat model's end of turn) is
  written as llama.cpp's end-of-turn token.
  """
  vocab = records.concrete(vocab)
  record = records.describe(vocab) if vocab is not None else {"kind": None}
  if record["kind"] == "huggingface":
    meta = _bpe_metadata(vocab, vocab_size)
  elif record["kind"] == "sentencepiece":
    meta = _sentencepiece_metadata(vocab, vocab_size)
  else:
    raise UserError(f"GGUF export needs a Hugging Face or SentencePiece tokenizer, and this model has "
                    f"{'a byte' if record['kind'] == 'byte' else 'no'} vocabulary, which llama.cpp cannot use; "
                    "export it with EXPORT_FORMAT='huggingface'")
  tokens = meta[_K.LIST]
  for key, index in ((_K.BOS_ID, record["bos_id"]), (_K.EOS_ID, record["eos_id"])):
    if index is not None and 0 <= index < len(tokens):
      meta[key] = int(index)
  others = [int(i) for i in stop_ids if i != record["eos_id"] and 0 <= i < len(tokens)]
  if others:
    meta[_K.EOT_ID] = others[0]
  meta[_K.ADD_BOS] = bool(record["add_bos"]) and _K.BOS_ID in meta
  meta[_K.ADD_EOS] = False
  template = getattr(vocab, "chat_template", None)
  if template:
    meta[_K.CHAT_TEMPLATE] = template
  _check_round_trip(vocab, meta)
  return meta


def _padded(tokens: dict[int, str], vocab_size: int, what: str) -> list[Optional[str]]:
  """Tokens by id, with None for ids the tokenizer does not use, `vocab_size` long."""
  top = max(tokens, default=-1)
  if top >= vocab_size:
    raise UserError(f"the tokenizer {what} has token id {top} but the model has only {vocab_size} embedding "
                    "rows; export with the tokenizer the model was trained with")
  return [tokens.get(i) for i in range(vocab_size)]


def _bpe_metadata(vocab, vocab_size: int) -> dict:
  tok = vocab.tokenizer
  data = json.loads(tok.to_str())
  model = data.get("model") or {}
  if model.get("type") != "BPE":
    raise UserError(f"GGUF export supports byte-level BPE and SentencePiece tokenizers; {vocab.tokenizer_file} "
                    f"is a {model.get('type')} tokenizer: export it with EXPORT_FORMAT='huggingface'")
  pre = _pre_tokenizer_name(data)
  if pre is None:
    raise UserError(f"{vocab.tokenizer_file}: its pre-tokenizer is none that llama.cpp names (GPT-2, Llama 3, "
                    "Qwen2 or SmolLM byte-level BPE); export it with EXPORT_FORMAT='huggingface'")
  by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
  tokens = _padded(by_id, vocab_size, vocab.tokenizer_file)
  added = {t["id"]: t["special"] for t in data.get("added_tokens", [])}
  types = []
  for i, token in enumerate(tokens):
    if token is None:
      tokens[i], kind = f"[PAD{i}]", gguf.TokenType.UNUSED
    elif i in added:
      kind = gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED
    else:
      kind = gguf.TokenType.NORMAL
    types.append(int(kind))
  meta = {_K.MODEL: "gpt2", _K.PRE: pre, _K.LIST: tokens, _K.TOKEN_TYPE: types,
          _K.MERGES: [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]}
  unk = model.get("unk_token")
  if unk is not None and tok.token_to_id(unk) is not None:
    meta[_K.UNK_ID] = tok.token_to_id(unk)
  return meta


def _pre_tokenizer_name(data: dict) -> Optional[str]:
  """llama.cpp's name for a tokenizer.json's normalizer + pre-tokenizer, as text.gguf_tokenizer rebuilds them."""
  pre, norm = data.get("pre_tokenizer"), data.get("normalizer")
  steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
  kinds = [s.get("type") for s in steps]
  nfc = norm is not None and norm.get("type") == "NFC"
  if (norm is not None and not nfc) or not kinds or kinds[-1] != "ByteLevel" or steps[-1].get("add_prefix_space"):
    return None
  regex = steps[-1].get("use_regex", True)
  if kinds == ["ByteLevel"] and regex and not nfc:
    return "gpt-2"
  if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and regex and not nfc:
    return "smollm"
  if kinds == ["Split", "ByteLevel"] and not regex and steps[0].get("behavior") == "Isolated":
    pattern = (steps[0].get("pattern") or {}).get("Regex")
    if pattern == gguf_tokenizer.LLAMA3_SPLIT and not nfc:  # the importer's own patterns
      return "llama-bpe"
    if pattern == gguf_tokenizer.QWEN2_SPLIT and nfc:
      return "qwen2"
  return None


def _sentencepiece_metadata(vocab, vocab_size: int) -> dict:
  from sentencepiece import sentencepiece_model_pb2 as pb
  proto = pb.ModelProto()
  with open(_file(vocab), "rb") as f:
    proto.ParseFromString(f.read())
  pieces = _padded(dict(enumerate(p.piece for p in proto.pieces)), vocab_size, _file(vocab))
  tokens, scores, types = [], [], []
  for i, piece in enumerate(pieces):
    if piece is None:
      piece, score, kind = f"[PAD{i}]", 0.0, int(gguf.TokenType.UNUSED)
    else:  # SentencePiece's piece types are llama.cpp's token types
      score, kind = float(proto.pieces[i].score), int(proto.pieces[i].type)
    tokens.append(piece)
    scores.append(score)
    types.append(kind)
  meta = {_K.MODEL: "llama", _K.PRE: "default", _K.LIST: tokens, _K.SCORES: scores, _K.TOKEN_TYPE: types,
          _K.ADD_PREFIX: bool(proto.normalizer_spec.add_dummy_prefix),
          _K.REMOVE_EXTRA_WS: bool(proto.normalizer_spec.remove_extra_whitespaces)}
  if vocab.unk_id is not None:
    meta[_K.UNK_ID] = int(vocab.unk_id)
  if proto.trainer_spec.pad_id >= 0:
    meta[_K.PAD_ID] = int(proto.trainer_spec.pad_id)
  return meta


def _file(vocab) -> str:
  return getattr(vocab, "tokenizer_file", None) or vocab.sentencepiece_model_file


class _Meta:
  """A metadata dict read the way gguf_tokenizer.Metadata reads a file's metadata (`get(key, default)`)."""

  def __init__(self, meta: dict):
    self._meta = meta

  def get(self, key: str, default: Any = gguf_tokenizer.REQUIRED) -> Any:
    if key in self._meta:
      return self._meta[key]
    if default is gguf_tokenizer.REQUIRED:
      raise KeyError(key)
    return default


def _check_round_trip(vocab, meta: dict) -> None:
  """Builds the tokenizer that flan_jax's GGUF import makes of `meta` and checks it encodes as `vocab`."""
  tokens = meta[_K.LIST]
  specials = [tokens[i] for i in sorted(getattr(vocab, "special_ids", ()) or ()) if 0 <= i < len(tokens)][:32]
  texts = _PROBE + [" x".join(specials)]
  if meta[_K.MODEL] == "gpt2":
    rebuilt = gguf_tokenizer.bpe_tokenizer(_Meta(meta), tokens, _file(vocab))
    got = [e.ids for e in rebuilt.encode_batch(texts, add_special_tokens=False)]
  else:
    import sentencepiece as spm
    model = gguf_tokenizer.sentencepiece_model(_Meta(meta), tokens)
    got = [list(ids) for ids in spm.SentencePieceProcessor(model_proto=model.SerializeToString()).encode(texts)]
  for text, ids in zip(texts, got):
    if list(ids) != list(vocab.encode(text)):
      raise UserError(f"{_file(vocab)} cannot be written as a llama.cpp {meta[_K.MODEL]!r} vocabulary "
                      f"that tokenizes the same ({text[:30]!r} differs); export it with EXPORT_FORMAT='huggingface'")


def _add_tokenizer(writer: gguf.GGUFWriter, meta: dict) -> None:
  writer.add_tokenizer_model(meta[_K.MODEL])
  writer.add_tokenizer_pre(meta[_K.PRE])
  writer.add_token_list(meta[_K.LIST])
  writer.add_token_types(meta[_K.TOKEN_TYPE])
  if _K.MERGES in meta:
    writer.add_token_merges(meta[_K.MERGES])
  if _K.SCORES in meta:
    writer.add_token_scores(meta[_K.SCORES])
  for key, add in ((_K.BOS_ID, writer.add_bos_token_id), (_K.EOS_ID, writer.add_eos_token_id),
                   (_K.UNK_ID, writer.add_unk_token_id), (_K.PAD_ID, writer.add_pad_token_id),
                   (_K.EOT_ID, writer.add_eot_token_id)):
    if key in meta:
      add(meta[key])
  writer.add_add_bos_token(meta[_K.ADD_BOS])
  writer.add_add_eos_token(meta[_K.ADD_EOS])
  for key, add in ((_K.ADD_PREFIX, writer.add_add_space_prefix),
                   (_K.REMOVE_EXTRA_WS, writer.add_remove_extra_whitespaces),
                   (_K.CHAT_TEMPLATE, writer.add_chat_template)):
    if key in meta:
      add(meta[key])
