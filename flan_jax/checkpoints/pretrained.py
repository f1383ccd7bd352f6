"""Pretrained Llama-family models: Hugging Face directories and GGUF files in, Hugging Face out.

Import reads config.json into a ModelConfig and places each tensor straight onto the mesh, shard
by shard (each host reads only the slices its devices own). Export writes config.json, sharded
safetensors with an index, generation_config.json and the tokenizer, one layer's tensor at a time.
"""

import dataclasses
import json
import os
import re
import resource
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence, Union

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import files as files_lib
from flan_jax import settings
from flan_jax.checkpoints import safetensors_io
from flan_jax.checkpoints import store as checkpointing
from flan_jax.errors import UserError
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig, Transformer

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


@dataclasses.dataclass
class Pretrained:
  """An opened pretrained model: its config (ours and Hugging Face's) and its tensors."""
  path: str
  hf_config: dict
  config: ModelConfig
  source: TensorSource


def is_pretrained(path: Optional[str]) -> bool:
  """True for a Hugging Face model directory (config.json + weights) or a .gguf file."""
  if not path:
    return False
  if path.endswith(".gguf"):
    return True
  return os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints"))


def open_pretrained(path: str, **overrides: Any) -> Pretrained:
  """Opens a Hugging Face directory or a GGUF file; `overrides` set non-shape ModelConfig fields."""
  if path.endswith(".gguf"):
    hf_config, source = _open_gguf(path)
  else:
    hf_config, source = read_config(path), safetensors_io.SafetensorsDirectory(path)
  config = ModelConfig(**config_fields(hf_config, path), **overrides)
  check_tensors(config, source, path)
  return Pretrained(path, hf_config, config, source)


@gin.configurable
def pretrained_model_config(path: str = gin.REQUIRED) -> ModelConfig:
  """The ModelConfig of a pretrained model; dtypes, remat and dropout come from ModelConfig's gin bindings."""
  return ModelConfig(**config_fields(read_config(path), path))


def read_config(path: str) -> dict:
  """The Hugging Face config dict of a model directory or a GGUF file."""
  if path.endswith(".gguf"):
    return _open_gguf(path)[0]
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise UserError(f"{path} is neither a Hugging Face model directory (no config.json) nor a .gguf file")
  with open(config_file) as f:
    return json.load(f)


def _open_gguf(path: str) -> tuple[dict, TensorSource]:
  if not os.path.isfile(path):
    raise UserError(f"GGUF file {path} does not exist")
  from flan_jax.checkpoints import gguf_reader as gguf_io
  return gguf_io.open_gguf(path)


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
  for m, shape in _leaves(config):
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


def _leaves(config: ModelConfig) -> list[tuple[Mapping, tuple[int, ...]]]:
  """(mapping, our full shape) for every parameter of the model."""
  params = nn.unbox(jax.eval_shape(partitioning.param_init_fn(Transformer(config)), jax.random.key(0)))
  return [(m, tuple(_get(params, m.path).shape)) for m in name_table(config)]


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# --- Import: onto the mesh, shard by shard. --------------------------------------------------------

def load_params(pretrained: Pretrained, mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[tuple] = None,
                config: Optional[ModelConfig] = None) -> Any:
  """Our parameter tree, each leaf placed on the mesh with its sharding (one device if no mesh).

  Each device's block is read on its own, so a host reads only what its devices hold.
  `config` (default: the pretrained one) sets the parameter dtype; its shape must match.
  """
  config = config or pretrained.config
  check_config(config, pretrained.config, pretrained.path)
  mesh = mesh or partitioning.make_mesh(devices=jax.devices()[:1])
  rules = rules or partitioning.axis_rules()
  shapes, shardings = partitioning.param_shapes_and_shardings(
      partitioning.param_init_fn(Transformer(config)), mesh, rules)
  params: dict = {}
  for m in name_table(config):
    struct, sharding = _get(shapes, m.path), _get(shardings, m.path)
    _set(params, m.path, jax.make_array_from_callback(
        struct.shape, sharding, _block_reader(m, pretrained.source, struct.shape, struct.dtype)))
  return params


def _block_reader(m: Mapping, source: TensorSource, shape: tuple[int, ...], dtype) -> Callable:
  cache: dict = {}  # devices that hold the same block (replicas) read it once

  def read(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
    key = tuple((s.start, s.stop) for s in index)
    if key not in cache:
      block = np.empty([s.stop - s.start for s in index], dtype)
      if m.stacked:  # one Hugging Face tensor per layer, converted into place
        for j, layer in enumerate(range(index[0].start, index[0].stop)):
          block[j] = read_hf(m, source, layer, shape[1:], index[1:])
      else:
        block[...] = read_hf(m, source, None, shape, index)
      cache[key] = block
    return cache[key]

  return read


def restore_params(path: str, config: ModelConfig, mesh: jax.sharding.Mesh, rules: tuple,
                   param_structs: Any) -> tuple[int, Any]:
  """(step, parameters) from a flan_jax checkpoint, or from a pretrained model (step 0).

  A LoRA run's checkpoint gives its adapters merged into its base (flan_jax/adapters.py).
  """
  if is_pretrained(path):
    return 0, load_params(open_pretrained(path), mesh, rules, config)
  from flan_jax.checkpoints import adapters  # imports this module
  if adapters.read_record(checkpointing.model_dir_of(path)) is not None:
    return adapters.restore_merged(path, config, mesh, rules, param_structs)
  return checkpointing.restore_params(path, param_structs)


def starting_vocabulary(path: str):
  """The vocabulary of a pretrained model or of a flan_jax run directory; None if it has none."""
  from flan_jax.text import vocabulary as vocabularies  # TensorFlow and seqio: imported where a vocabulary is needed
  if is_pretrained(path):
    try:
      return vocabularies.pretrained_vocabulary(path)
    except UserError:  # weights without a tokenizer: the run's own choice stands
      return None
  return checkpointing.recorded_vocabulary(checkpointing.model_dir_of(path))


def starting_format(path: str) -> Optional[dict]:
  """The example format a flan_jax run recorded (checkpointing.recorded_format); None for a pretrained model."""
  return None if is_pretrained(path) else checkpointing.recorded_format(checkpointing.model_dir_of(path))


def peak_host_memory_gib() -> float:
  """This process's peak resident memory so far (Linux reports kilobytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# --- Export. ----------------------------------------------------------------------------------------

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


def hf_tensors(params: Any, config: ModelConfig, dtype) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, host array) for every tensor, one at a time, gathered from the mesh."""
  for m in name_table(config):
    leaf = _get(params, m.path)
    for i in m.layers(config):
      value = leaf[i] if m.stacked else leaf
      yield m.hf_name.format(i=i), to_hf(m, _to_host(value).astype(dtype))


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def export(params: Any, config: ModelConfig, output_dir: str, *, dtype: str = "bfloat16",
           bos_id: Optional[int] = None, eos_id: Union[int, Sequence[int], None] = None,
           max_shard_bytes: int = 5 * 2 ** 30) -> list[str]:
  """Writes a Hugging Face model directory (weights and configs); returns the safetensors files.

  config.json, which makes a directory a model (`is_pretrained`), is written last and renamed into place
  whole, so an export cut short never looks like a model.
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
    files_lib.write_json(os.path.join(output_dir, "config.json"),
                         hf_config(config, bos_id=bos_id, eos_id=eos_id, dtype=str(np_dtype)))
  return files


def _planned_sizes(config: ModelConfig, dtype) -> list[tuple[str, int]]:
  sizes = []
  for m, shape in _leaves(config):
    per = int(np.prod(shape[1:] if m.stacked else shape)) * dtype.itemsize
    sizes += [(m.hf_name.format(i=i), per) for i in m.layers(config)]
  return sizes


@gin.configurable
def export_checkpoint(checkpoint_path: str = gin.REQUIRED, output_dir: str = gin.REQUIRED, *,
                      dtype: str = "bfloat16", max_shard_gb: float = 5.0,
                      model_config: Optional[ModelConfig] = None,
                      mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[tuple] = None,
                      adapter: bool = False, export_format: str = "huggingface",
                      overwrite: bool = False) -> list[str]:
  """Exports a flan_jax checkpoint (or a pretrained model) as a Hugging Face model directory.

  The model config, vocabulary and example format are the ones the run recorded; the tokenizer
  file is copied with a tokenizer_config.json (whether it adds BOS, its chat template), so
  `transformers.AutoTokenizer` loads it and prompts as the run was trained, and generation stops
  at the tokens the run's decodes stop at (EOS, and a chat model's end of turn).
  `export_format="gguf"` writes one llama.cpp file instead (flan_jax/gguf_export.py). `overwrite` allows
  a non-empty OUTPUT_DIR: the export replaces the files it writes (and a previous export's weights and
  tokenizer files it would not write again) and leaves everything else there alone.
  """
  from flan_jax.text import formats  # TensorFlow and seqio: imported where a vocabulary is needed
  from flan_jax.text import vocabulary as vocabularies
  if not checkpoint_path:
    raise UserError("CHECKPOINT_PATH is not set: pass --gin.CHECKPOINT_PATH=<model dir> or <model dir>/<step>")
  if not output_dir:
    raise UserError("OUTPUT_DIR is not set: pass --gin.OUTPUT_DIR=<directory for the Hugging Face model>")
  allowed = {"huggingface": ("bfloat16", "float16", "float32"), "gguf": ("bfloat16", "float16", "float32", "q8_0")}
  if export_format not in allowed:
    raise UserError(f"EXPORT_FORMAT {export_format!r} is not supported; use 'huggingface' or 'gguf'")
  if dtype not in allowed[export_format]:
    raise UserError(f"export dtype {dtype!r} is not supported for EXPORT_FORMAT {export_format!r}; use "
                    f"{', '.join(allowed[export_format])}")
  settings.number("export_checkpoint.max_shard_gb", max_shard_gb, low=0, low_open=True)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise UserError(f"OUTPUT_DIR {output_dir} is a file; pass a directory")
  if not overwrite and os.path.isdir(output_dir) and os.listdir(output_dir):
    raise UserError(f"OUTPUT_DIR {output_dir} is not empty; choose a new directory, or pass --gin.OVERWRITE=True "
                    "to replace the files an earlier export wrote there")
  if adapter and export_format != "huggingface":
    raise UserError("EXPORT_ADAPTER=True writes a PEFT directory; drop EXPORT_FORMAT='gguf' or EXPORT_ADAPTER")
  model_dir = checkpointing.model_dir_of(checkpoint_path)
  if adapter:  # a LoRA run's adapters alone, as a PEFT directory
    from flan_jax.checkpoints import adapters
    if is_pretrained(checkpoint_path) or adapters.read_record(model_dir) is None:
      raise UserError(f"EXPORT_ADAPTER=True needs a LoRA run's checkpoint; {checkpoint_path} records no LoRA base "
                      f"({adapters.RECORD}): export it without EXPORT_ADAPTER")
    return [adapters.export_adapter(checkpoint_path, output_dir, mesh or partitioning.make_mesh(),
                                    rules or partitioning.axis_rules())]
  if model_config is None:
    model_config = (pretrained_model_config(checkpoint_path) if is_pretrained(checkpoint_path)
                    else checkpointing.recorded_model_config(model_dir))
  if model_config is None:
    raise UserError(f"{model_dir} records no model config (model_config.json); include its gin/models/*.gin "
                    "and bind export_checkpoint.model_config = @ModelConfig()")
  if export_format == "gguf":
    from flan_jax.checkpoints import gguf_writer as gguf_export
    return [gguf_export.export_checkpoint(checkpoint_path, output_dir, model_config, dtype=dtype, mesh=mesh,
                                          rules=rules)]
  mesh = mesh or partitioning.make_mesh()
  rules = rules or partitioning.axis_rules()
  target = partitioning.sharded_param_structs(Transformer(model_config), mesh, rules)
  step, params = restore_params(checkpoint_path, model_config, mesh, rules, target)
  vocab = starting_vocabulary(checkpoint_path)
  bos = vocabularies.bos_id_or_zero(vocab) if vocab is not None else None
  eos = None
  if vocab is not None:
    stops = list(formats.stop_ids(vocab, (starting_format(checkpoint_path) or {"format": formats.DEFAULT})["format"]))
    eos = stops if len(stops) > 1 else vocab.eos_id
  files = export(params, model_config, output_dir, dtype=dtype, bos_id=bos, eos_id=eos,
                 max_shard_bytes=int(max_shard_gb * 2 ** 30))
  if jax.process_index() == 0:
    if vocab is not None and vocabularies.describe(vocab)["kind"] != "byte":
      _save_tokenizer(vocab, output_dir)
    if overwrite:
      _remove_stale_export_files(output_dir, files, vocab)
    print(f"exported step {step} of {checkpoint_path} to {output_dir} ({len(files)} safetensors file(s), "
          f"{dtype})", flush=True)
  return files


def _remove_stale_export_files(output_dir: str, written: list[str], vocab) -> None:
  """After an export over an earlier one: removes the earlier export's weights and tokenizer files that
  this one did not write (a loader would prefer a stale model.safetensors or tokenizer.json to the new
  files). Only names an export writes are candidates; nothing else in the directory is touched."""
  from flan_jax.text import vocabulary as vocabularies  # TensorFlow and seqio: imported where a vocabulary is needed
  kind = vocabularies.describe(vocab)["kind"] if vocab is not None else "byte"
  keep = set(written) | ({safetensors_io.INDEX} if len(written) > 1 else set())
  if kind in vocabularies.FILES:
    keep |= {vocabularies.FILES[kind], vocabularies.RECORD, vocabularies.TOKENIZER_CONFIG}
    if getattr(vocab, "chat_template", None):
      keep.add(vocabularies.CHAT_TEMPLATE)
  owned = {safetensors_io.SINGLE, safetensors_io.INDEX, vocabularies.RECORD, vocabularies.TOKENIZER_CONFIG,
           vocabularies.CHAT_TEMPLATE, *vocabularies.FILES.values()}
  for name in os.listdir(output_dir):
    if name not in keep and (name in owned or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name)):
      path = os.path.join(output_dir, name)
      if os.path.isfile(path) and not os.path.islink(path):
        os.remove(path)


def _save_tokenizer(vocab, output_dir: str) -> None:
  """The tokenizer file plus a tokenizer_config.json naming its class and special tokens."""
  from flan_jax.text import vocabulary as vocabularies  # TensorFlow and seqio: imported where a vocabulary is needed
  vocabularies.save(vocab, output_dir)
  record = vocabularies.describe(vocab)
  if record["kind"] == "huggingface":
    token, tokenizer_class = vocab.tokenizer.id_to_token, "PreTrainedTokenizerFast"
  else:
    token, tokenizer_class = vocab.tokenizer.id_to_piece, "LlamaTokenizer"
  config = {"tokenizer_class": tokenizer_class, "model_max_length": 1 << 20, "add_bos_token": record["add_bos"]}
  for name in ("bos", "eos"):
    if record[f"{name}_id"] is not None:
      config[f"{name}_token"] = token(record[f"{name}_id"])
  if getattr(vocab, "chat_template", None):
    config["chat_template"] = vocab.chat_template
  with open(os.path.join(output_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
