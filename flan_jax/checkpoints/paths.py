"""Where things are in a run directory, and what kind of model a path names, from file names alone.

A run directory (MODEL_DIR) holds its checkpoints in MODEL_DIR/checkpoints/<step> and the input
pipeline's position of each step in MODEL_DIR/input_positions/process_<i>/<step>; its records
(model_config.json, vocabulary/, lora_base.json, trained_on.json) are run_record.py's. A pretrained
model is a Hugging Face directory (config.json + weights) or a .gguf file. Nothing here reads a
file's contents. Each path may be local or in a bucket (flan_jax.storage).
"""

from typing import Optional

from flan_jax import storage
from flan_jax.errors import UserError

SUBDIR = "checkpoints"  # where a run keeps them inside MODEL_DIR
INPUT_POSITIONS = "input_positions"  # MODEL_DIR/input_positions/process_<i>/<step>: see data.InputIterator


# Orbax's last file of a whole checkpoint on GCS, which has no rename: a step's folder there fills under its final
# name (elsewhere orbax renames a finished folder into place: a folder named by its step is whole).
COMMIT_FILE = "commit_success.txt"


def is_complete_step(step_dir: str) -> bool:
  """Whether a step's folder holds a finished checkpoint (one still being written into a bucket does not)."""
  if storage.scheme(step_dir) != "gs":
    return True
  return storage.exists(storage.join(step_dir, COMMIT_FILE))


def model_dir_of(path: str) -> str:
  """MODEL_DIR of MODEL_DIR, MODEL_DIR/checkpoints or MODEL_DIR/checkpoints/<step>."""
  path = storage.absolute(path)
  if storage.basename(path).isdigit():
    path = storage.dirname(path)
  return storage.dirname(path) if storage.basename(path) == SUBDIR else path


def is_pretrained(path: Optional[str]) -> bool:
  """True for a Hugging Face model directory (config.json + weights) or a .gguf file."""
  if not path:
    return False
  if path.endswith(".gguf"):
    return True
  return storage.isfile(storage.join(path, "config.json")) and not storage.isdir(storage.join(path, "checkpoints"))


def base_location(path: str) -> str:
  """The files the base's parameters come from: a checkpoint's step directory (MODEL_DIR means its newest),
  else the pretrained model's path."""
  if is_pretrained(path):
    return storage.absolute(path)
  path = storage.absolute(path)
  if storage.basename(path).isdigit():
    return path
  directory = storage.join(path, SUBDIR) if storage.isdir(storage.join(path, SUBDIR)) else path
  steps = sorted(int(d) for d in storage.listdir(directory) if d.isdigit()) if storage.isdir(directory) else []
  if not steps:
    raise UserError(f"INITIAL_CHECKPOINT_PATH {path} holds no checkpoint to tune adapters on; pass a pretrained "
                    "model or a flan_jax checkpoint")
  return storage.join(directory, str(steps[-1]))
