"""Where things are in a run directory, and what kind of model a path names, from file names alone.

A run directory (MODEL_DIR) holds its checkpoints in MODEL_DIR/checkpoints/<step> and the input
pipeline's position of each step in MODEL_DIR/input_positions/process_<i>/<step>; its records
(model_config.json, vocabulary/, lora_base.json, trained_on.json) are run_record.py's. A pretrained
model is a Hugging Face directory (config.json + weights) or a .gguf file. Nothing here reads a
file's contents.
"""

import os
from typing import Optional

from flan_jax.errors import UserError

SUBDIR = "checkpoints"  # where a run keeps them inside MODEL_DIR
INPUT_POSITIONS = "input_positions"  # MODEL_DIR/input_positions/process_<i>/<step>: see data.InputIterator


def model_dir_of(path: str) -> str:
  """MODEL_DIR of MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>."""
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    path = os.path.dirname(path)
  return os.path.dirname(path) if os.path.basename(path) == SUBDIR else path


def is_pretrained(path: Optional[str]) -> bool:
  """True for a Hugging Face model directory (config.json + weights) or a .gguf file."""
  if not path:
    return False
  if path.endswith(".gguf"):
    return True
  return os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints"))


def base_location(path: str) -> str:
  """The files the base's parameters come from: a checkpoint's step directory (MODEL_DIR means its newest),
  else the pretrained model's path."""
  if is_pretrained(path):
    return os.path.abspath(path)
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    return path
  directory = os.path.join(path, SUBDIR) if os.path.isdir(os.path.join(path, SUBDIR)) else path
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  if not steps:
    raise UserError(f"INITIAL_CHECKPOINT_PATH {path} holds no checkpoint to tune adapters on; pass a pretrained "
                    "model or a flan_jax checkpoint")
  return os.path.join(directory, str(steps[-1]))
