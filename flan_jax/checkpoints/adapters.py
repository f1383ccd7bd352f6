"""A LoRA run on disk: the record of its base model (MODEL_DIR/lora_base.json), loading that base, the
run's adapters merged into plain weights for eval and export, and the adapters as a PEFT directory.

A LoRA run's checkpoints hold the adapters and their optimizer state only; the base is read again from
the recorded path, and a sampled content hash checks it is the model the adapters were trained on.
"""

import hashlib
import json
import os
from typing import Any, Optional

import jax
import numpy as np

from flan_jax import files
from flan_jax.checkpoints import store as checkpointing
from flan_jax.errors import UserError
from flan_jax.model import lora as lora_lib
from flan_jax.model import partitioning
from flan_jax.model.transformer import ModelConfig, Transformer

RECORD = "lora_base.json"
_SAMPLES, _CHUNK = 32, 1 << 16


def fingerprint(path: str) -> str:
  """A sha256 over a model's files: each one's relative name, size and 32 chunks of 64 KiB spread over it.

  Reading samples instead of every byte keeps it fast for a model of many GB; two different weight files of
  the same shapes differ in every chunk. `path` is a GGUF file, a Hugging Face directory or a checkpoint step.
  """
  path = os.path.abspath(path)
  names = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
  digest = hashlib.sha256()
  for name in names:
    size = os.path.getsize(name)
    digest.update(f"{os.path.relpath(name, os.path.dirname(path))}\0{size}\0".encode())
    with open(name, "rb") as f:
      for offset in sorted({size * i // _SAMPLES for i in range(_SAMPLES)} | {max(size - _CHUNK, 0)}):
        f.seek(offset)
        digest.update(f.read(_CHUNK))
  return digest.hexdigest()


def base_location(path: str) -> str:
  """The files the base's parameters come from: a checkpoint's step directory (MODEL_DIR means its newest),
  else the pretrained model's path."""
  from flan_jax.checkpoints import pretrained  # pretrained restores a LoRA run through this module
  if pretrained.is_pretrained(path):
    return os.path.abspath(path)
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    return path
  directory = os.path.join(path, checkpointing.SUBDIR) if os.path.isdir(os.path.join(path, checkpointing.SUBDIR)) \
      else path
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  if not steps:
    raise UserError(f"INITIAL_CHECKPOINT_PATH {path} holds no checkpoint to tune adapters on; pass a pretrained "
                    "model or a flan_jax checkpoint")
  return os.path.join(directory, str(steps[-1]))


def read_record(model_dir: str) -> Optional[dict]:
  path = os.path.join(model_dir, RECORD)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_base(model_dir: str, initial_checkpoint_path: Optional[str], lora: lora_lib.LoraConfig,
               config: ModelConfig) -> dict:
  """The base record of a LoRA run starting or resuming in `model_dir`, after checking it still holds."""
  if not initial_checkpoint_path:
    raise UserError("a LoRA run tunes adapters on a frozen base model: set INITIAL_CHECKPOINT_PATH to a "
                    "pretrained model or a flan_jax checkpoint")
  location = base_location(initial_checkpoint_path)
  record = {"path": location, "hash": fingerprint(location), "lora": lora.record(),
            "model_config": json.loads(json.dumps(config.__dict__))}
  recorded = read_record(model_dir)
  if recorded is None:
    if os.path.isdir(os.path.join(model_dir, checkpointing.SUBDIR)) and os.listdir(
        os.path.join(model_dir, checkpointing.SUBDIR)):
      raise UserError(f"{model_dir} holds checkpoints of a full fine-tuning run; a LoRA run needs a new MODEL_DIR")
    return record
  if recorded["lora"] != record["lora"]:
    changed = sorted(k for k in record["lora"] if recorded["lora"].get(k) != record["lora"][k])
    raise UserError(f"{model_dir} was tuned with other LoRA settings ({', '.join(changed)}: {recorded['lora']}); "
                    "resume with the same LoraConfig or start a new MODEL_DIR")
  if recorded["hash"] != record["hash"]:
    raise UserError(f"the base model at {location} is not the one {model_dir}'s adapters were trained on "
                    f"({recorded['path']}, hash {recorded['hash'][:12]}); point INITIAL_CHECKPOINT_PATH at that base")
  return record


def write_record(model_dir: str, record: dict) -> None:
  files.write_json(os.path.join(model_dir, RECORD), record)


def load_frozen(path: str, config: ModelConfig, lora: lora_lib.LoraConfig, mesh, rules, frozen_structs) -> Any:
  """The frozen base of the adapted model, on the mesh: the base's parameters, quantized if lora says so."""
  from flan_jax.checkpoints import pretrained  # pretrained restores a LoRA run through this module
  plain = partitioning.sharded_param_structs(Transformer(config), mesh, rules)
  _, base = pretrained.restore_params(path, config, mesh, rules, plain)
  shardings = jax.tree.map(lambda s: s.sharding, frozen_structs)
  with partitioning.activate(mesh, rules):
    return jax.jit(lambda p: lora_lib.freeze(p, lora), out_shardings=shardings)(base)


def _recorded(model_dir: str) -> dict:
  record = read_record(model_dir)
  if record is None:
    raise UserError(f"{model_dir} records no LoRA base ({RECORD}); it is not a LoRA run")
  return record


def restore_adapters(path: str, mesh, rules) -> tuple[int, Any, dict, Any]:
  """(step, adapters, base record, LoraConfig) of a LoRA run's checkpoint, after checking its base is unchanged."""
  model_dir = checkpointing.model_dir_of(path)
  record = _recorded(model_dir)
  lora = lora_lib.LoraConfig(**record["lora"])
  config = ModelConfig(**record["model_config"])
  if not os.path.exists(record["path"]):
    raise UserError(f"the base model of {model_dir}, {record['path']}, is gone; restore it there to use the adapters")
  if fingerprint(record["path"]) != record["hash"]:
    raise UserError(f"the base model at {record['path']} changed since {model_dir}'s adapters were trained on it "
                    f"(hash {record['hash'][:12]}); restore that base")
  init = partitioning.param_init_fn(Transformer(config, lora))
  shapes, shardings = partitioning.param_shapes_and_shardings(lambda rng: lora_lib.split(init(rng))[0], mesh, rules)
  step, adapters = checkpointing.restore_params(path, partitioning.with_shardings(shapes, shardings))
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


def peft_tensors(adapters: Any, config: ModelConfig) -> dict[str, np.ndarray]:
  """PEFT's names and layouts of the adapters: lora_A.weight [rank, in], lora_B.weight [out, rank] per layer."""
  from flan_jax.checkpoints import pretrained
  out = {}
  for group in ("attn", "mlp"):
    for name, leaf in adapters["layers"][group].items():
      kernel, which = name.rsplit("_lora_", 1)
      value = np.asarray(pretrained._to_host(leaf), np.float32)  # [layers, ...]
      rank_last = which == "a"
      for i in range(config.num_layers):
        x = value[i]
        matrix = x.reshape(-1, x.shape[-1]).T if rank_last else x.reshape(x.shape[0], -1).T  # [rank, in] / [out, rank]
        prefix = f"base_model.model.model.layers.{i}.{lora_lib.HF_MODULES[kernel]}"
        out[f"{prefix}.lora_{which.upper()}.weight"] = np.ascontiguousarray(matrix)
  return out


def export_adapter(checkpoint_path: str, output_dir: str, mesh, rules) -> str:
  """Writes the run's adapters as a PEFT LoRA directory (adapter_config.json, adapter_model.safetensors)."""
  from safetensors.numpy import save_file
  step, adapters, record, lora = restore_adapters(checkpoint_path, mesh, rules)
  config = ModelConfig(**record["model_config"])
  tensors = peft_tensors(adapters, config)
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, "adapter_model.safetensors")
    save_file(tensors, files.temporary(final), metadata={"format": "pt"})
    os.replace(files.temporary(final), final)
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": record["path"],
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
        "target_modules": sorted(lora_lib.HF_MODULES[lora_lib.TARGETS[t]].split(".")[1] for t in lora.targets),
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True, "modules_to_save": None}
    files.write_json(os.path.join(output_dir, "adapter_config.json"), adapter_config)
    print(f"exported the adapters of step {step} of {checkpoint_path} to {output_dir} (PEFT LoRA, rank {lora.rank}"
          f"{f', trained on an {lora.base_quantization} base' if lora.quantized else ''})", flush=True)
  return output_dir
