"""A LoRA run's adapters as a PEFT LoRA directory (adapter_config.json, adapter_model.safetensors).

Takes the adapter arrays (restore.restore_adapters gives them) and writes into a local directory; it never
restores. adapter_config.json, the file PEFT loads a directory by, is written last (for a bucket, export.py
uploads the local directory with it last too).
"""

import os
from typing import Any

import jax
import numpy as np

from flan_jax import files
from flan_jax.checkpoints import hf
from flan_jax.model import lora as lora_lib
from flan_jax.model.config import ModelConfig

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def peft_tensors(adapters: Any, config: ModelConfig) -> dict[str, np.ndarray]:
  """PEFT's names and layouts of the adapters: lora_A.weight [rank, in], lora_B.weight [out, rank] per layer."""
  out = {}
  for group in ("attn", "mlp"):
    for name, leaf in adapters["layers"][group].items():
      kernel, which = name.rsplit("_lora_", 1)
      value = np.asarray(hf.to_host(leaf), np.float32)  # [layers, ...]
      rank_last = which == "a"
      for i in range(config.num_layers):
        x = value[i]
        matrix = x.reshape(-1, x.shape[-1]).T if rank_last else x.reshape(x.shape[0], -1).T  # [rank, in] / [out, rank]
        prefix = f"base_model.model.model.layers.{i}.{lora_lib.HF_MODULES[kernel]}"
        out[f"{prefix}.lora_{which.upper()}.weight"] = np.ascontiguousarray(matrix)
  return out


def write(adapters: Any, config: ModelConfig, lora: lora_lib.LoraConfig, base_path: str, output_dir: str) -> None:
  """Writes the adapters (of a model of `config`, tuned with `lora` on the base at `base_path`) into
  `output_dir`. Every process takes part in gathering them; only process 0 writes."""
  from safetensors.numpy import save_file
  tensors = peft_tensors(adapters, config)
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, WEIGHTS)
    save_file(tensors, files.temporary(final), metadata={"format": "pt"})
    os.replace(files.temporary(final), final)
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
        "target_modules": sorted(lora_lib.HF_MODULES[lora_lib.TARGETS[t]].split(".")[1] for t in lora.targets),
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True, "modules_to_save": None}
    files.write_json(os.path.join(output_dir, CONFIG), adapter_config)
