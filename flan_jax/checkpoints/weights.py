"""What a path holds, read onto the mesh: a Hugging Face directory, a GGUF file, a flan_jax run, or a LoRA run on
its base (which may itself be a run: `restore_params` recurses).

A pretrained model is opened as its config (ours and Hugging Face's) and its tensors, then placed
straight onto the mesh, shard by shard: each host reads only the slices its devices own. A run gives
its newest (or named) checkpoint's parameters; a LoRA run's checkpoints hold the adapters only, so its
parameters are its adapters merged into its base, read again from the recorded path and checked
against the recorded hash.
A pretrained model in a bucket is read from its local copy in the staging cache (storage.staged): a GGUF
file, or a Hugging Face directory's config, safetensors and tokenizer files (not its other files).

Needs neither seqio nor TensorFlow, so the lm-evaluation-harness backend reads models with it alone; restore.py
names all of this too and adds the vocabulary and example format a path starts a run with. Never writes: the
writers are hf.py, gguf_writer.py and peft.py, the export command's body export.py.
"""

import contextlib
import dataclasses
import resource
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from flan_jax import storage
from flan_jax.checkpoints import gguf_reader, hf, paths, run_record, safetensors_io, store
from flan_jax.errors import UserError
from flan_jax.model import lora as lora_lib
from flan_jax.model import partitioning
from flan_jax.model.config import ModelConfig
from flan_jax.model.transformer import Transformer

# --- Pretrained models: a Hugging Face directory or a GGUF file. -----------------------------------

@dataclasses.dataclass
class Pretrained:
  """An opened pretrained model: its config (ours and Hugging Face's) and its tensors."""
  path: str
  hf_config: dict
  config: ModelConfig
  source: hf.TensorSource


# What a bucket's Hugging Face directory gives its staged copy: the config, the safetensors weights and the
# tokenizer files, at its top. Another framework's weights (pytorch_model.bin, an original/ folder) are not fetched.
_MODEL_FILES = (".json", ".safetensors", ".model", ".jinja", ".txt")


def open_pretrained(path: str, **overrides: Any) -> Pretrained:
  """Opens a Hugging Face directory or a GGUF file; `overrides` set non-shape ModelConfig fields."""
  if path.endswith(".gguf"):
    hf_config, source = _open_gguf(path)
  else:
    hf_config, source = read_config(path), _open_safetensors(path)
  config = ModelConfig(**hf.config_fields(hf_config, path), **overrides)
  hf.check_tensors(config, source, path)
  return Pretrained(path, hf_config, config, source)


def read_config(path: str) -> dict:
  """The Hugging Face config dict of a model directory or a GGUF file."""
  if path.endswith(".gguf"):
    return _open_gguf(path)[0]
  config_file = storage.join(path, hf.CONFIG)
  if not storage.isfile(config_file):
    raise UserError(f"{path} is neither a Hugging Face model directory (no config.json) nor a .gguf file")
  return storage.read_json(config_file)


def _open_gguf(path: str) -> tuple[dict, hf.TensorSource]:
  if not storage.isfile(path):
    raise UserError(f"GGUF file {path} does not exist")
  local = storage.staged(path)
  with _named(local, path):
    return gguf_reader.open_gguf(local)


def _open_safetensors(path: str) -> safetensors_io.SafetensorsDirectory:
  if not storage.is_remote(path):
    return safetensors_io.SafetensorsDirectory(path)
  safetensors_io.check_weights(path, storage.listdir(path))  # before fetching anything
  local = storage.staged(path, include=lambda name: "/" not in name and name.endswith(_MODEL_FILES))
  with _named(local, path):
    return safetensors_io.SafetensorsDirectory(local)


@contextlib.contextmanager
def _named(local: str, path: str) -> Iterator[None]:
  """A UserError about the staged copy `local` names the bucket path `path` the user gave instead."""
  try:
    yield
  except UserError as e:
    if local != path and local in str(e):
      raise UserError(str(e).replace(local, path)) from e
    raise


def load_params(pretrained: Pretrained, mesh: Optional[jax.sharding.Mesh] = None, rules: Optional[tuple] = None,
                config: Optional[ModelConfig] = None) -> Any:
  """Our parameter tree, each leaf placed on the mesh with its sharding (one device if no mesh).

  Each device's block is read on its own, so a host reads only what its devices hold.
  `config` (default: the pretrained one) sets the parameter dtype; its shape must match.
  """
  config = config or pretrained.config
  hf.check_config(config, pretrained.config, pretrained.path)
  mesh = mesh or partitioning.make_mesh(devices=jax.devices()[:1])
  rules = rules or partitioning.axis_rules()
  shapes, shardings = partitioning.param_shapes_and_shardings(
      partitioning.param_init_fn(Transformer(config)), mesh, rules)
  params: dict = {}
  for m in hf.name_table(config):
    struct, sharding = hf.get_path(shapes, m.path), hf.get_path(shardings, m.path)
    _set(params, m.path, jax.make_array_from_callback(
        struct.shape, sharding, _block_reader(m, pretrained.source, struct.shape, struct.dtype)))
  return params


def _block_reader(m: hf.Mapping, source: hf.TensorSource, shape: tuple[int, ...], dtype) -> Callable:
  cache: dict = {}  # devices that hold the same block (replicas) read it once

  def read(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
    key = tuple((s.start, s.stop) for s in index)
    if key not in cache:
      block = np.empty([s.stop - s.start for s in index], dtype)
      if m.stacked:  # one Hugging Face tensor per layer, converted into place
        for j, layer in enumerate(range(index[0].start, index[0].stop)):
          block[j] = hf.read_hf(m, source, layer, shape[1:], index[1:])
      else:
        block[...] = hf.read_hf(m, source, None, shape, index)
      cache[key] = block
    return cache[key]

  return read


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def peak_host_memory_gib() -> float:
  """This process's peak resident memory so far (Linux reports kilobytes)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# --- Any path: a pretrained model, a run, a LoRA run on its base. ----------------------------------

def restore_params(path: str, config: ModelConfig, mesh: jax.sharding.Mesh, rules: tuple,
                   param_structs: Any) -> tuple[int, Any]:
  """(step, parameters) from a flan_jax checkpoint, or from a pretrained model (step 0).

  A LoRA run's checkpoint gives its adapters merged into its base (restore_merged, which restores
  the base through this function).
  """
  if paths.is_pretrained(path):
    return 0, load_params(open_pretrained(path), mesh, rules, config)
  if run_record.read_lora_base(paths.model_dir_of(path)) is not None:
    return restore_merged(path, config, mesh, rules, param_structs)
  return store.restore_params(path, param_structs)


def load_frozen(path: str, config: ModelConfig, lora: lora_lib.LoraConfig, mesh, rules, frozen_structs) -> Any:
  """The frozen base of the adapted model, on the mesh: the base's parameters, quantized if lora says so."""
  plain = partitioning.sharded_param_structs(Transformer(config), mesh, rules)
  _, base = restore_params(path, config, mesh, rules, plain)
  shardings = jax.tree.map(lambda s: s.sharding, frozen_structs)
  with partitioning.activate(mesh, rules):
    return jax.jit(lambda p: lora_lib.freeze(p, lora), out_shardings=shardings)(base)


def restore_adapters(path: str, mesh, rules) -> tuple[int, Any, dict, Any]:
  """(step, adapters, base record, LoraConfig) of a LoRA run's checkpoint, after checking its base is unchanged."""
  model_dir = paths.model_dir_of(path)
  record = run_record.required_lora_base(model_dir)
  lora = lora_lib.LoraConfig(**record["lora"])
  config = ModelConfig(**record["model_config"])
  run_record.check_base_unchanged(model_dir, record)
  init = partitioning.param_init_fn(Transformer(config, lora))
  shapes, shardings = partitioning.param_shapes_and_shardings(lambda rng: lora_lib.split(init(rng))[0], mesh, rules)
  step, adapters = store.restore_params(path, partitioning.with_shardings(shapes, shardings))
  return step, adapters, record, lora


def restore_merged(path: str, config: ModelConfig, mesh, rules, param_structs) -> tuple[int, Any]:
  """(step, parameters of the plain model) of a LoRA run: its adapters merged into its base."""
  step, adapters, record, lora = restore_adapters(path, mesh, rules)
  init = partitioning.param_init_fn(Transformer(config, lora))
  frozen_shapes, frozen_shardings = partitioning.param_shapes_and_shardings(
      lambda rng: lora_lib.split(init(rng))[1], mesh, rules)
  frozen = load_frozen(record["path"], config, lora, mesh, rules,
                       partitioning.with_shardings(frozen_shapes, frozen_shardings))
  shardings = jax.tree.map(lambda s: s.sharding, param_structs)
  with partitioning.activate(mesh, rules):
    # In the plain model's dtypes: a base held in LoraConfig.base_dtype comes back in ModelConfig.param_dtype.
    merged = jax.jit(lambda f, a: jax.tree.map(lambda x, s: x.astype(s.dtype), lora_lib.merge(f, a, lora),
                                               param_structs), out_shardings=shardings)(frozen, adapters)
  return step, merged
