"""What a path starts a run with: its model config (gin's `pretrained_model_config`), its parameters on the mesh,
and the vocabulary and example format it was made with.

The parameters are weights.py's (a Hugging Face directory, a GGUF file, a flan_jax run, or a LoRA run on its base),
named here too for the trainer, the evaluator and export. The vocabulary is a seqio vocabulary (flan_jax.text's),
so this module imports seqio and TensorFlow; what needs no vocabulary of seqio's, such as the lm-evaluation-harness
backend, reads models with weights.py and run records with run_record.py alone.
Never writes: the writers are hf.py, gguf_writer.py and peft.py, the export command's body export.py.
"""

from typing import Optional

import gin

from flan_jax.checkpoints import hf, paths, run_record
from flan_jax.checkpoints.weights import (  # noqa: F401  (named here too, as callers always found them)
    Pretrained,
    load_frozen,
    load_params,
    open_pretrained,
    peak_host_memory_gib,
    read_config,
    restore_adapters,
    restore_merged,
    restore_params,
)
from flan_jax.errors import UserError
from flan_jax.model.config import ModelConfig
from flan_jax.text import tokenizers, vocabulary


@gin.configurable
def pretrained_model_config(path: str = gin.REQUIRED) -> ModelConfig:
  """The ModelConfig of a pretrained model; dtypes, remat and dropout come from ModelConfig's gin bindings."""
  return ModelConfig(**hf.config_fields(read_config(path), path))


def starting_vocabulary(path: str, missing_ok: bool = False):
  """The vocabulary of a pretrained model or of a flan_jax run directory; None for a run that recorded none.

  A pretrained model whose tokenizer cannot be read (a Hugging Face directory without tokenizer.json or
  tokenizer.model, a GGUF file with an unsupported one) is a one-line UserError, as its weights would otherwise
  meet the byte vocabulary silently; with `missing_ok` (the run chose its vocabulary itself, or an export copies
  what the directory has) it gives None and the run's choice stands.
  """
  if paths.is_pretrained(path):
    try:
      return vocabulary.pretrained_vocabulary(path)
    except UserError:
      if missing_ok:
        return None
      raise
  recorded = run_record.recorded_vocabulary(paths.model_dir_of(path))
  return None if recorded is None else tokenizers.build(recorded)


def starting_format(path: str) -> Optional[dict]:
  """The example format a flan_jax run recorded (run_record.recorded_format); None for a pretrained model."""
  return None if paths.is_pretrained(path) else run_record.recorded_format(paths.model_dir_of(path))
