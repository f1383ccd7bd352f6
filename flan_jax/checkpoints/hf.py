"""Hugging Face models as data: config.json both ways, the name table, and the writer of a model directory.

- config.json -> ModelConfig fields (`config_fields`, and `check_config` for a run's own config) and
  ModelConfig -> config.json (`hf_config`).
- The name table (`name_table`, a list of `Mapping`s): which Hugging Face tensor holds each of our
  parameters, in which layout. `read_hf` reads a block of ours out of a `TensorSource`, `to_hf` turns
  one layer of ours into its Hugging Face tensor, `leaves` lists every parameter with its shape.
- `write`: a parameter tree as a Hugging Face directory (config.json, generation_config.json, sharded
  safetensors with an index), one layer's tensor at a time; `to_host` gathers an array from the mesh.

Never restores: what a path holds is restore.py's, the export command's body export.py's.
"""

import dataclasses
import os
from typing import Any, Iterator, Optional, Protocol, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import files as files_lib
from flan_jax.checkpoints import safetensors_io
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.config import ModelConfig
from flan_jax.model.transformer import Transformer

CONFIG = "config.json"  # the file whose presence makes a directory a model (paths.is_pretrained): written last
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
# ModelConfig fields that describe the weights and what they compute; the rest (dtypes, remat,
# dropout, max_position_embeddings) are the run's choice.
SHAPE_FIELDS = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff",
                "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
                "rope_high_freq_factor", "rope_original_max_position", "qkv_bias", "sliding_window", "prefix_lm",
                "norm_eps", "tie_embeddings")


class TensorSource(Protocol):
  """Tensors by their Hugging Face names, in Hugging Face layout (a Linear weight is [out, in])."""

  def keys(self) -> list[str]: ...

  def shape(self, name: str) -> tuple[int, ...]: ...

  def read(self, name: str, index: tuple[slice, ...] = ()) -> np.ndarray: ...


# --- config.json both ways. -----------------------------------------------------------------------

def _rope(hf: dict, path: str) -> dict:
  """Rotary fields from `rope_scaling` + `rope_theta` (older configs) or `rope_parameters` (newer)."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = dict(hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = scaling.get("rope_type", scaling.get("type", params.get("rope_type", "default")))
  settings = {**params, **scaling}
  out = dict(rope_theta=float(theta))
  if kind in ("default", None):
    return out
  if kind == "linear":
    return dict(out, rope_scaling="linear", rope_scaling_factor=float(settings["factor"]))
  if kind == "llama3":
    return dict(out, rope_scaling="llama3", rope_scaling_factor=float(settings["factor"]),
                rope_low_freq_factor=float(settings["low_freq_factor"]),
                rope_high_freq_factor=float(settings["high_freq_factor"]),
                rope_original_max_position=int(settings["original_max_position_embeddings"]))
  raise UserError(f"{path}: rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def config_fields(hf: dict, path: str = "config.json") -> dict:
  """The weight-describing ModelConfig fields of a Hugging Face config.json dict."""
  archs = hf.get("architectures") or []
  arch = next((a for a in archs if a in ARCHITECTURES), None)
  if arch is None:
    raise UserError(f"{path}: architecture {archs or hf.get('model_type')} is not supported; supported: "
                    f"{', '.join(ARCHITECTURES)}")
  family = ARCHITECTURES[arch]
  unsupported = {
      "hidden_act": hf.get("hidden_act", "silu") != "silu",
      "attention_bias": family != "qwen2" and bool(hf.get("attention_bias")),
      "mlp_bias": bool(hf.get("mlp_bias")),
      "use_sliding_window": family == "qwen2" and bool(hf.get("use_sliding_window")),
      "quantization_config": "quantization_config" in hf,
  }
  for field, bad in unsupported.items():
    if bad:
      raise UserError(f"{path}: config field {field}={hf.get(field)!r} is not supported for {arch}")
  heads = int(hf["num_attention_heads"])
  window = hf.get("sliding_window") if family == "mistral" else None
  return dict(
      vocab_size=int(hf["vocab_size"]), d_model=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads), d_ff=int(hf["intermediate_size"]),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_position_embeddings=int(hf.get("max_position_embeddings", 8192)), qkv_bias=family == "qwen2",
      sliding_window=int(window) if window else None, prefix_lm=False, **_rope(hf, path))


def check_config(config: ModelConfig, pretrained_config: ModelConfig, path: str) -> None:
  """A one-line error listing every weight-describing field where the run's config differs."""
  diffs = [f"{f}: gin {getattr(config, f)!r} vs {getattr(pretrained_config, f)!r}" for f in SHAPE_FIELDS
           if getattr(config, f) != getattr(pretrained_config, f)]
  if diffs:
    raise UserError(f"the model config does not match {path}: {'; '.join(diffs)} (include the matching "
                    "gin/models/*.gin, or bind model_config = @pretrained_model_config())")


def hf_config(config: ModelConfig, *, bos_id: Optional[int], eos_id: Union[int, Sequence[int], None],
              dtype: str) -> dict:
  """config.json for our config: Qwen2 if it has q/k/v biases, Mistral if it has a window, else Llama."""
  arch, model_type = "LlamaForCausalLM", "llama"
  if config.qkv_bias:
    arch, model_type = "Qwen2ForCausalLM", "qwen2"
  elif config.sliding_window:
    arch, model_type = "MistralForCausalLM", "mistral"
  out = dict(architectures=[arch], model_type=model_type, vocab_size=config.vocab_size,
             hidden_size=config.d_model, intermediate_size=config.d_ff, num_hidden_layers=config.num_layers,
             num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
             head_dim=config.head_dim, hidden_act="silu", rms_norm_eps=config.norm_eps,
             rope_theta=config.rope_theta, max_position_embeddings=config.max_position_embeddings,
             tie_word_embeddings=config.tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
             torch_dtype=dtype, attention_bias=False, mlp_bias=False)
  if config.sliding_window:
    out["sliding_window"] = config.sliding_window
  if config.qkv_bias:
    out.update(use_sliding_window=False)
    del out["attention_bias"], out["mlp_bias"]
  if config.rope_scaling == "linear":
    out["rope_scaling"] = {"rope_type": "linear", "factor": config.rope_scaling_factor}
  elif config.rope_scaling == "llama3":
    out["rope_scaling"] = {"rope_type": "llama3", "factor": config.rope_scaling_factor,
                           "low_freq_factor": config.rope_low_freq_factor,
                           "high_freq_factor": config.rope_high_freq_factor,
                           "original_max_position_embeddings": config.rope_original_max_position}
  return out


# --- The name table: our parameter path <-> Hugging Face tensor names and layouts. ---------------

@dataclasses.dataclass(frozen=True)
class Mapping:
  """How one of our parameters is stored in Hugging Face tensors.

  `hf_name` has `{i}` for the layer of a stacked parameter. Layouts: "copy" (same layout),
  "linear" (ours = weight.T reshaped: our first `in_dims` dims come from the Linear's input, the
  rest from its output) and "bias" (ours = bias reshaped).
  """
  path: tuple[str, ...]
  hf_name: str
  layout: str = "copy"
  in_dims: int = 1

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf_name

  def layers(self, config: ModelConfig) -> list[Optional[int]]:
    """The layers this parameter spans: each has its own tensor; None for an unstacked one."""
    return list(range(config.num_layers)) if self.stacked else [None]


def name_table(config: ModelConfig) -> list[Mapping]:
  """The Mapping of every parameter of a model of `config`, in the order the writers emit tensors."""
  attn, mlp = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
  table = [
      Mapping(("embedding",), "model.embed_tokens.weight"),
      Mapping(("layers", "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight"),
      Mapping(("layers", "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight"),
      Mapping(("layers", "attn", "wq"), f"{attn}.q_proj.weight", "linear"),
      Mapping(("layers", "attn", "wk"), f"{attn}.k_proj.weight", "linear"),
      Mapping(("layers", "attn", "wv"), f"{attn}.v_proj.weight", "linear"),
      Mapping(("layers", "attn", "wo"), f"{attn}.o_proj.weight", "linear", in_dims=2),
      Mapping(("layers", "mlp", "w_gate"), f"{mlp}.gate_proj.weight", "linear"),
      Mapping(("layers", "mlp", "w_up"), f"{mlp}.up_proj.weight", "linear"),
      Mapping(("layers", "mlp", "w_down"), f"{mlp}.down_proj.weight", "linear"),
      Mapping(("final_norm", "scale"), "model.norm.weight"),
  ]
  if config.qkv_bias:
    table += [Mapping(("layers", "attn", f"b{x}"), f"{attn}.{x}_proj.bias", "bias") for x in "qkv"]
  if not config.tie_embeddings:
    table.append(Mapping(("lm_head",), "lm_head.weight", "linear"))
  return table


def _span(index: slice, dims: tuple[int, ...]) -> tuple[slice, tuple[int, ...], tuple[slice, ...]]:
  """For our slices over `dims` (1 or 2 dims flattened into one Hugging Face axis): the flat range
  to read, the shape to reshape it to, and the slices to apply after reshaping."""
  if len(dims) == 1:
    return index[0], (index[0].stop - index[0].start,), (slice(None),)
  (_, b), (sa, sb) = dims, index
  return slice(sa.start * b, sa.stop * b), (sa.stop - sa.start, b), (slice(None), sb)


def read_hf(m: Mapping, source: TensorSource, layer: Optional[int], shape: tuple[int, ...],
            index: tuple[slice, ...]) -> np.ndarray:
  """Our parameter's block `index` (one layer's shape `shape`) read from its Hugging Face tensor."""
  name = m.hf_name.format(i=layer)
  index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
  if m.layout == "copy":
    return source.read(name, index)
  if m.layout == "bias":
    flat, reshape, post = _span(index, shape)
    return source.read(name, (flat,)).reshape(reshape)[post]
  in_flat, in_shape, in_post = _span(index[:m.in_dims], shape[:m.in_dims])
  out_flat, out_shape, out_post = _span(index[m.in_dims:], shape[m.in_dims:])
  block = source.read(name, (out_flat, in_flat)).T  # [in, out]
  return block.reshape(in_shape + out_shape)[in_post + out_post]


def to_hf(m: Mapping, value: np.ndarray) -> np.ndarray:
  """One layer of our parameter in its Hugging Face layout."""
  if m.layout == "linear":
    in_size = int(np.prod(value.shape[:m.in_dims]))
    return value.reshape(in_size, -1).T
  if m.layout == "bias":
    return value.reshape(-1)
  return value


def check_tensors(config: ModelConfig, source: TensorSource, path: str) -> None:
  """One line naming missing, unexpected and wrongly shaped tensors."""
  want = {}
  for m, shape in leaves(config):
    for i in m.layers(config):
      want[m.hf_name.format(i=i)] = to_hf(m, np.empty(shape[1:] if m.stacked else shape, np.int8)).shape
  have = {k for k in source.keys() if not k.endswith("rotary_emb.inv_freq")}
  missing = sorted(set(want) - have)
  extra = sorted(have - set(want))
  wrong = sorted(f"{k} {tuple(source.shape(k))} (expected {want[k]})" for k in set(want) & have
                 if tuple(source.shape(k)) != want[k])
  problems = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(extra)}" if extra else "",
              f"wrong shape {_few(wrong)}" if wrong else ""]
  if any(problems):
    raise UserError(f"{path} does not hold the tensors its config describes: "
                    + "; ".join(p for p in problems if p))


def _few(names: list[str], n: int = 4) -> str:
  return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def leaves(config: ModelConfig) -> list[tuple[Mapping, tuple[int, ...]]]:
  """(mapping, our full shape) for every parameter of the model."""
  params = nn.unbox(jax.eval_shape(partitioning.param_init_fn(Transformer(config)), jax.random.key(0)))
  return [(m, tuple(get_path(params, m.path).shape)) for m in name_table(config)]


def get_path(tree: Any, path: tuple[str, ...]) -> Any:
  """The leaf of a parameter tree at `path` (a Mapping's `path`)."""
  for key in path:
    tree = tree[key]
  return tree


# --- The writer: a parameter tree as a Hugging Face directory. ------------------------------------

def hf_tensors(params: Any, config: ModelConfig, dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, host array) for every tensor, one at a time, gathered from the mesh."""
  for m in name_table(config):
    leaf = get_path(params, m.path)
    for i in m.layers(config):
      value = leaf[i] if m.stacked else leaf
      yield m.hf_name.format(i=i), to_hf(m, to_host(value).astype(dtype))


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly sharded, possibly multi-host) array as one host numpy array; every process must call it."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def write(params: Any, config: ModelConfig, output_dir: str, *, dtype: str = "bfloat16",
          bos_id: Optional[int] = None, eos_id: Union[int, Sequence[int], None] = None,
          max_shard_bytes: int = 5 * 2 ** 30) -> list[str]:
  """Writes a Hugging Face model directory (weights and configs) into the local `output_dir`; returns the
  safetensors files.

  config.json, which makes a directory a model (`paths.is_pretrained`), is written last and renamed into place
  whole, so an export cut short never looks like a model. (An export into a bucket writes here into a local
  directory first and uploads it with config.json last: export.py.)
  """
  np_dtype = jnp.dtype(dtype)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(output_dir, exist_ok=True)
  files = safetensors_io.write_sharded(hf_tensors(params, config, np_dtype), output_dir,
                                       _planned_sizes(config, np_dtype), max_shard_bytes, write=is_main)
  if is_main:
    files_lib.write_json(os.path.join(output_dir, "generation_config.json"),
                         {"bos_token_id": bos_id, "eos_token_id": eos_id})
    files_lib.write_json(os.path.join(output_dir, CONFIG),
                         hf_config(config, bos_id=bos_id, eos_id=eos_id, dtype=str(np_dtype)))
  return files


def _planned_sizes(config: ModelConfig, dtype) -> list[tuple[str, int]]:
  sizes = []
  for m, shape in leaves(config):
    per = int(np.prod(shape[1:] if m.stacked else shape)) * dtype.itemsize
    sizes += [(m.hf_name.format(i=i), per) for i in m.layers(config)]
  return sizes
