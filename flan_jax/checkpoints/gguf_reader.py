"""Reads llama.cpp GGUF files of Llama and Qwen2 models as Hugging Face config, tensors and tokenizer.

Tensors come out under Hugging Face names and layouts as float32 (dequantized, q/k un-permuted).
"""

import json
import os
import re
from typing import Any

import gguf
import numpy as np

from flan_jax.errors import UserError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_REQUIRED = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
                   "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "attn_norm.weight",
                   "ffn_norm.weight")
_ROPE_FREQS = "rope_freqs.weight"
# Llama 3.x rotary scaling parameters other than `factor`; llama.cpp stores only the resulting
# per-frequency factors, so these are checked against the stored tensor.
_LLAMA3_DEFAULTS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}

_Q = gguf.GGMLQuantizationType
_FLOAT_TYPES = (_Q.F32, _Q.F16, _Q.F64)
_REQUIRED = object()

# Pre-tokenizer splits that llama.cpp names in `tokenizer.ggml.pre`, as the original Hugging Face
# tokenizers define them. `None` means ByteLevel's own GPT-2 split.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_TOKENIZERS = {
    "gpt-2": "gpt2", "phi-2": "gpt2",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3",
    "qwen2": "qwen2",
    "smollm": "digits", "starcoder": "digits",
}


class GGUFSource:
  """The tensors of a GGUF file under Hugging Face names and layouts, read as float32."""

  def __init__(self, path: str, tensors: dict[str, Any], names: dict[str, str],
               heads: dict[str, int]):
    self.path = path
    self._tensors = tensors  # GGUF name -> gguf.ReaderTensor
    self._names = names  # Hugging Face name -> GGUF name
    self._heads = heads  # Hugging Face name -> heads whose rotary halves llama.cpp interleaved

  def keys(self) -> list[str]:
    return list(self._names)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(self._tensor(name).shape))

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray:
    """Returns `full[index]` of the tensor `name` as float32, reading only the rows it needs."""
    tensor, index = self._tensor(name), tuple(index)
    heads = self._heads.get(name)
    if tensor.data.ndim < 2 and tensor.tensor_type not in _FLOAT_TYPES:
      full = _dequantize(tensor.data, tensor.tensor_type)  # a quantized vector: rows are bytes
      return (full[_unpermute_order(len(full), heads)] if heads else full)[index]
    rows = index[0] if index else slice(None)
    if heads:
      rows = _unpermute_order(tensor.data.shape[0], heads)[rows]
    out = _dequantize(tensor.data[rows], tensor.tensor_type)
    return out[(slice(None),) + index[1:]]

  def _tensor(self, name: str):
    if name not in self._names:
      raise KeyError(f"{name} is not a tensor of {self.path}")
    return self._tensors[self._names[name]]


def open_gguf(path: str) -> tuple[dict, GGUFSource]:
  """Returns the Hugging Face style config and the tensors of the GGUF model file at `path`."""
  reader = _reader(path)
  tensors = {t.name: t for t in reader.tensors}
  config = _config(reader, tensors, path)
  names = _hf_names(tensors, config["num_hidden_layers"], path)
  heads = {}
  if config["model_type"] == "llama":  # llama.cpp's converter permutes q and k of this one only
    for hf_name in names:
      if ".self_attn.q_proj." in hf_name:
        heads[hf_name] = config["num_attention_heads"]
      elif ".self_attn.k_proj." in hf_name:
        heads[hf_name] = config["num_key_value_heads"]
  return config, GGUFSource(path, tensors, names, heads)


def write_tokenizer(path: str, directory: str) -> str:
  """Writes the tokenizer of the GGUF file at `path` into `directory`; returns the file written.

  A byte-level BPE vocabulary becomes a `tokenizer.json`, a SentencePiece one a
  `tokenizer.model`. A `config.json` and a `tokenizer_config.json` go next to it, so the
  directory reads like a Hugging Face model directory.
  """
  reader = _reader(path)
  config = _config(reader, {t.name: t for t in reader.tensors}, path)
  meta = _Metadata(reader, path)
  kind = meta.get("tokenizer.ggml.model", None)
  embedded = meta.get("tokenizer.huggingface.json", None)  # the original tokenizer.json, if kept
  if embedded is None and kind not in ("gpt2", "llama"):
    raise UserError(f"{path}: tokenizer model {kind!r} is not supported; only 'gpt2' (byte-level "
                    "BPE) and 'llama' (SentencePiece) vocabularies can be converted")
  tokens = meta.get("tokenizer.ggml.tokens", [] if embedded is not None else _REQUIRED)
  os.makedirs(directory, exist_ok=True)
  if embedded is not None:
    target = os.path.join(directory, "tokenizer.json")
    with open(target, "w", encoding="utf-8") as f:
      f.write(embedded)
  elif kind == "gpt2":
    target = os.path.join(directory, "tokenizer.json")
    _bpe_tokenizer(meta, tokens, path).save(target)
  else:
    target = os.path.join(directory, "tokenizer.model")
    with open(target, "wb") as f:
      f.write(_sentencepiece_model(meta, tokens).SerializeToString())
  _write_json(os.path.join(directory, "config.json"), config)
  _write_json(os.path.join(directory, "tokenizer_config.json"), _tokenizer_config(meta, tokens, target))
  return target


# ---------------------------------------------------------------------------------------------
# Metadata and config.


class _Metadata:
  """Typed access to a GGUF file's key/value metadata."""

  def __init__(self, reader: gguf.GGUFReader, path: str):
    self._reader, self._path = reader, path

  def get(self, key: str, default: Any = _REQUIRED) -> Any:
    field = self._reader.get_field(key)
    if field is None:
      if default is _REQUIRED:
        raise UserError(f"{self._path} has no metadata key {key!r}; re-export it with a current "
                        "llama.cpp convert_hf_to_gguf.py")
      return default
    return field.contents()


def _reader(path: str) -> gguf.GGUFReader:
  if not os.path.isfile(path):
    raise UserError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError, KeyError, IndexError... on bad bytes
    reason = " ".join(str(e).split()) or type(e).__name__
    raise UserError(f"{path} is not a readable GGUF file ({reason}); pass a llama.cpp .gguf "
                    "model file") from None


def _config(reader: gguf.GGUFReader, tensors: dict, path: str) -> dict:
  meta = _Metadata(reader, path)
  if meta.get("split.count", 1) > 1:
    raise UserError(f"{path} is one part of a split GGUF model; merge the parts first with llama.cpp's "
                    "llama-gguf-split --merge")
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise UserError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                    f"{', '.join(ARCHITECTURES)}")

  def key(name, default=_REQUIRED):
    return _single(meta.get(f"{arch}.{name}", default), f"{arch}.{name}", path)

  hidden, heads = key("embedding_length"), key("attention.head_count")
  head_dim = key("attention.key_length", hidden // heads)
  if key("attention.value_length", head_dim) != head_dim:
    raise UserError(f"{path}: key and value head sizes differ, which Llama-family models do not "
                    "support; use a Llama or Qwen2 GGUF")
  if key("rope.dimension_count", head_dim) != head_dim:
    raise UserError(f"{path}: rotary embeddings cover part of each head (partial rotary), which is "
                    "not supported; use a model with full-head rotary embeddings")
  if "token_embd.weight" not in tensors:
    raise UserError(f"{path} has no token_embd.weight tensor; it is not a complete model file")
  theta = _decimal(key("rope.freq_base", 10000.0))
  config = {
      "architectures": [ARCHITECTURES[arch]],
      "model_type": arch,
      "hidden_size": hidden,
      "intermediate_size": key("feed_forward_length"),
      "num_hidden_layers": key("block_count"),
      "num_attention_heads": heads,
      "num_key_value_heads": key("attention.head_count_kv", heads),
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rope_theta": theta,
      "rms_norm_eps": _decimal(key("attention.layer_norm_rms_epsilon", 1e-5)),
      "vocab_size": int(tensors["token_embd.weight"].shape[-1]),
      "tie_word_embeddings": "output.weight" not in tensors,
      "bos_token_id": meta.get("tokenizer.ggml.bos_token_id", None),
      "eos_token_id": meta.get("tokenizer.ggml.eos_token_id", None),
      "max_position_embeddings": key("context_length"),
  }
  if arch == "llama":
    config["attention_bias"] = "blk.0.attn_q.bias" in tensors
  window = key("attention.sliding_window", None)
  if window:
    config["sliding_window"] = window
  scaling = _rope_scaling(key, tensors, theta, head_dim, path)
  if scaling:
    config["rope_scaling"] = scaling
  # Transformers 5 keeps the rotary settings together under this key.
  config["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
  return config


def _single(value: Any, key: str, path: str) -> Any:
  """A per-layer list with one repeated value is that value; differing values are unsupported."""
  if not isinstance(value, list):
    return value
  if len(set(value)) != 1:
    raise UserError(f"{path}: {key} differs between layers, which is not supported; use a model "
                    "whose layers all have the same shape")
  return value[0]


def _decimal(value: float) -> float:
  """The shortest decimal that a float32 metadata value rounds from: 1e-5, not 9.99999974e-06."""
  return float(str(np.float32(value)))


def _rope_scaling(key, tensors: dict, theta: float, head_dim: int, path: str) -> dict | None:
  kind = key("rope.scaling.type", "none")
  if kind == "linear":
    scaling = {"rope_type": "linear", "factor": _decimal(key("rope.scaling.factor"))}
  elif kind == "yarn":
    scaling = {"rope_type": "yarn", "factor": _decimal(key("rope.scaling.factor")),
               "original_max_position_embeddings": key("rope.scaling.original_context_length")}
  elif kind == "none":
    scaling = None
  else:
    raise UserError(f"{path}: rotary scaling type {kind!r} is not supported; supported: linear, "
                    "yarn and Llama 3's rope_freqs tensor")
  if _ROPE_FREQS not in tensors:
    return scaling
  if scaling:
    raise UserError(f"{path} has both {kind} rotary scaling and a {_ROPE_FREQS} tensor, which "
                    "is not supported; re-export it with llama.cpp's convert_hf_to_gguf.py")
  tensor = tensors[_ROPE_FREQS]
  return _llama3_scaling(_dequantize(tensor.data, tensor.tensor_type), theta, head_dim, path)


def _llama3_scaling(stored: np.ndarray, theta: float, head_dim: int, path: str) -> dict | None:
  """Llama 3 rotary scaling parameters that reproduce llama.cpp's per-frequency factors."""
  if np.all(stored == 1.0):
    return None
  scaling = {"rope_type": "llama3", "factor": _decimal(stored.max()), **_LLAMA3_DEFAULTS}
  expected = llama3_rope_factors(theta, head_dim, scaling)
  if stored.shape != expected.shape or not np.allclose(stored, expected, rtol=1e-5, atol=0):
    raise UserError(f"{path}: llama3 rope-frequency tensor {_ROPE_FREQS} does not match Llama 3's "
                    "default low/high frequency factors and is not supported yet; use the "
                    "Hugging Face checkpoint instead")
  return scaling


def llama3_rope_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
  """The factors llama.cpp's converter divides each rotary frequency by for Llama 3 scaling."""
  freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
  wavelen = 2 * np.pi / freqs.astype(np.float64)
  factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  smooth = (old / wavelen - low) / (high - low)
  middle = 1 / ((1 - smooth) / factor + smooth)
  out = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, middle))
  return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Tensors.


def _hf_names(tensors: dict, num_layers: int, path: str) -> dict[str, str]:
  """Maps Hugging Face names to the GGUF names of the file's tensors; checks none is foreign."""
  names = {}
  for name, tensor in tensors.items():
    if name == _ROPE_FREQS:
      continue
    hf_name = _GLOBAL_NAMES.get(name)
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if match and match[2] in _LAYER_NAMES:
      hf_name = f"model.layers.{match[1]}.{_LAYER_NAMES[match[2]]}.{match[3]}"
    if hf_name is None:
      raise UserError(f"{path}: tensor {name} is not part of a dense Llama/Qwen2 model (mixture "
                      "of experts?); only dense Llama-family models are supported")
    _check_type(name, tensor.tensor_type, path)
    names[hf_name] = name
  for i in range(num_layers):
    for suffix in _LAYER_REQUIRED:
      if f"blk.{i}.{suffix}" not in tensors:
        raise UserError(f"{path} lacks tensor blk.{i}.{suffix}; the file is incomplete")
  if "output_norm.weight" not in tensors:
    raise UserError(f"{path} lacks tensor output_norm.weight; the file is incomplete")
  return names


def _check_type(name: str, qtype: gguf.GGMLQuantizationType, path: str):
  if qtype in _FLOAT_TYPES:
    return
  block = np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8)
  try:
    gguf.quants.dequantize(block, qtype)
  except NotImplementedError:
    raise UserError(f"{path}: tensor {name} has type {qtype.name}, which the gguf package cannot "
                    "dequantize; use a file quantized as F16, BF16, Q8_0, Q4_0 or a K-quant") from None


def _dequantize(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
  if qtype == _Q.F32:
    return np.array(data, dtype=np.float32)
  if qtype in _FLOAT_TYPES:
    return data.astype(np.float32)
  return gguf.quants.dequantize(data, qtype)


def _unpermute_order(rows: int, heads: int) -> np.ndarray:
  """Row order that undoes llama.cpp's rotary permutation: HF row r is GGUF row order[r].

  The converter reshapes the rows of each head as (2, head_dim / 2) and transposes them, so the
  two rotary halves become interleaved pairs.
  """
  permuted = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)
  return np.argsort(permuted)


# ---------------------------------------------------------------------------------------------
# Tokenizers.


def _bpe_tokenizer(meta: _Metadata, tokens: list[str], path: str):
  """A `tokenizers.Tokenizer` equal to the original byte-level BPE tokenizer."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  pre = meta.get("tokenizer.ggml.pre", None)
  split = _PRE_TOKENIZERS.get(pre)
  if split is None:
    raise UserError(f"{path}: BPE pre-tokenizer {pre!r} is not supported; supported: "
                    f"{', '.join(sorted(_PRE_TOKENIZERS))}")
  vocab = {}
  for i, token in enumerate(tokens):
    vocab.setdefault(token, i)
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges")]
  unk = _token_id(meta, "unknown", tokens)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None if unk is None else tokens[unk],
                             ignore_merges=split == "llama3"))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in ("gpt2", "digits"))
  if split in ("llama3", "qwen2"):
    regex = Regex(_LLAMA3_SPLIT if split == "llama3" else _QWEN2_SPLIT)
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


def _post_processor(meta: _Metadata, tokens: list[str], add_bos_default: bool):
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


def _sentencepiece_model(meta: _Metadata, tokens: list[str]):
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


def _token_types(meta: _Metadata, tokens: list[str]) -> list[int]:
  """llama.cpp's token types (SentencePiece's piece types); anything unrecognised counts as normal."""
  types = meta.get("tokenizer.ggml.token_type", None) or [gguf.TokenType.NORMAL] * len(tokens)
  known = {int(t) for t in gguf.TokenType}
  return [t if t in known else int(gguf.TokenType.NORMAL) for t in types]


def _token_id(meta: _Metadata, name: str, tokens: list[str]) -> int | None:
  """The id under `tokenizer.ggml.<name>_token_id`, when the file has one that names a token."""
  index = meta.get(f"tokenizer.ggml.{name}_token_id", None)
  return index if index is not None and 0 <= index < len(tokens) else None


def _tokenizer_config(meta: _Metadata, tokens: list[str], target: str) -> dict:
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
