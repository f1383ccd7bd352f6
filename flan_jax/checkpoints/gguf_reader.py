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
from flan_jax.text import gguf_tokenizer
from flan_jax.text.gguf_tokenizer import REQUIRED as _REQUIRED
from flan_jax.text.gguf_tokenizer import Metadata as _Metadata
from flan_jax.text.gguf_tokenizer import open_reader as _reader

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
  `tokenizer.model` (flan_jax.text.gguf_tokenizer). The model's `config.json` and a
  `tokenizer_config.json` go next to it, so the directory reads like a Hugging Face model directory.
  """
  reader = _reader(path)
  config = _config(reader, {t.name: t for t in reader.tensors}, path)
  target = gguf_tokenizer.write_tokenizer_files(reader, path, directory)
  _write_json(os.path.join(directory, "config.json"), config)
  return target


# ---------------------------------------------------------------------------------------------
# Metadata and config.


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


def _write_json(path: str, value: dict):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, ensure_ascii=False)
